"""Workspace staging: fresh private copies, never the originals; escaping symlinks refused."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from torchdoctor.sandbox.workspace import (
    WorkspaceError,
    hand_over,
    over_quota,
    remove_owned_files,
    remove_workspace,
    stage_workspace,
    tree_usage,
)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "pkg").mkdir(parents=True)
    (root / "train.py").write_text("print('train')\n")
    (root / "pkg" / "model.py").write_text("X = 1\n")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref\n")
    return root


def test_a_folder_is_copied_as_the_workspace_itself(repo: Path, tmp_path: Path) -> None:
    workspace = stage_workspace(repo, tmp_path)
    assert (workspace / "train.py").read_text() == "print('train')\n"
    assert (workspace / "pkg" / "model.py").is_file()
    assert not (workspace / ".git").exists()
    assert workspace.parent == tmp_path


def test_writing_in_the_copy_leaves_the_original_alone(repo: Path, tmp_path: Path) -> None:
    workspace = stage_workspace(repo, tmp_path)
    (workspace / "train.py").write_text("changed\n")
    assert (repo / "train.py").read_text() == "print('train')\n"


def test_files_and_lists_are_copied_under_their_own_names(repo: Path, tmp_path: Path) -> None:
    single = stage_workspace(repo / "train.py", tmp_path)
    assert [p.name for p in single.iterdir()] == ["train.py"]
    several = stage_workspace([repo / "train.py", repo / "pkg"], tmp_path)
    assert sorted(p.name for p in several.iterdir()) == ["pkg", "train.py"]


def test_each_staging_is_a_new_directory(repo: Path, tmp_path: Path) -> None:
    assert stage_workspace(repo, tmp_path) != stage_workspace(repo, tmp_path)


def test_a_symlink_inside_the_tree_is_kept_relative(repo: Path, tmp_path: Path) -> None:
    (repo / "link.py").symlink_to(repo / "pkg" / "model.py")
    workspace = stage_workspace(repo, tmp_path)
    assert os.readlink(workspace / "link.py") == "pkg/model.py"
    assert (workspace / "link.py").read_text() == "X = 1\n"


def test_a_symlink_leaving_the_tree_is_refused_and_nothing_remains(
    repo: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("s")
    (repo / "pkg" / "leak").symlink_to(secret)
    root = tmp_path / "runs"
    root.mkdir()
    with pytest.raises(WorkspaceError, match="leaves the tree"):
        stage_workspace(repo, root)
    assert list(root.iterdir()) == []


def test_special_files_are_refused(repo: Path, tmp_path: Path) -> None:
    os.mkfifo(repo / "pipe")
    with pytest.raises(WorkspaceError, match="special file"):
        stage_workspace(repo, tmp_path)


def test_removal_copes_with_folders_a_job_locked(repo: Path, tmp_path: Path) -> None:
    workspace = stage_workspace(repo, tmp_path)
    os.chmod(workspace / "pkg", 0)
    remove_workspace(workspace)
    assert not workspace.exists()
    remove_workspace(workspace)


def test_hand_over_makes_the_copy_private_to_the_job_user(repo: Path, tmp_path: Path) -> None:
    workspace = stage_workspace(repo, tmp_path)
    hand_over(workspace, 54321, 54321)
    assert workspace.stat().st_uid == 54321
    assert (workspace / "pkg" / "model.py").stat().st_uid == 54321
    assert workspace.stat().st_mode & 0o777 == 0o700


def test_tree_usage_counts_blocks_and_entries_without_following_links(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 100_000)
    (tmp_path / "link").symlink_to("/usr")
    usage = tree_usage(tmp_path)
    assert 100_000 <= usage.bytes < 200_000
    assert usage.entries == 2


def test_many_empty_files_are_over_quota_too(tmp_path: Path) -> None:
    for index in range(50):
        (tmp_path / f"f{index}").touch()
    usage = tree_usage(tmp_path)
    assert over_quota(usage, disk_mb=1, max_files=10)
    assert not over_quota(usage, disk_mb=1, max_files=100)


def test_a_missing_source_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="no such source"):
        stage_workspace(tmp_path / "absent.py", tmp_path)


def test_only_the_job_users_files_are_removed_from_scratch(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir(mode=0o777)
    os.chmod(scratch, 0o1777)
    mine, theirs = scratch / "job.bin", scratch / "other.bin"
    mine.write_text("j")
    theirs.write_text("o")
    os.chown(mine, 54321, 54321)
    removed = remove_owned_files([str(tmp_path)], 54321)
    assert removed == [str(mine)]
    assert theirs.exists()


def test_removing_a_copy_another_process_is_removing_is_not_an_error(tmp_path: Path) -> None:
    copy = tmp_path / "td-ws-1-abc"
    (copy / "a" / "b").mkdir(parents=True)
    (copy / "a" / "b" / "f.py").write_text("x = 1\n")
    real_rmtree = shutil.rmtree

    def racing(path: str | Path, *args: object, **kwargs: object) -> None:
        real_rmtree(path)  # the other process finishes first
        raise FileNotFoundError(2, "No such file or directory", str(path))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shutil, "rmtree", racing)
        remove_workspace(copy)
    assert not copy.exists()
