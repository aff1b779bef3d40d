"""Workspace staging: fresh private copies, never the originals; escaping symlinks refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from torchdoctor.sandbox.workspace import (
    WorkspaceError,
    _alive,
    hand_over,
    over_quota,
    remove_owned_files,
    remove_workspace,
    stage_workspace,
    sweep_stale_copies,
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


def test_scratch_entries_removed_by_another_process_meanwhile_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/tmp is shared: an entry listed by the walk may be gone (another process's scratch
    folder, removed by it) before it is looked at; the job's own files are still removed."""
    scratch = tmp_path / "scratch"
    scratch.mkdir(mode=0o777)
    os.chmod(scratch, 0o1777)
    mine = scratch / "job.bin"
    mine.write_text("j")
    os.chown(mine, 54321, 54321)
    real_walk = os.walk

    def listing_a_vanished_entry(root: str) -> Iterator[tuple[str, list[str], list[str]]]:
        for folder, dirs, files in real_walk(root):
            yield folder, dirs, ["td-warm-gone", *files] if folder == str(scratch) else files

    monkeypatch.setattr(os, "walk", listing_a_vanished_entry)

    assert remove_owned_files([str(tmp_path)], 54321) == [str(mine)]
    assert not mine.exists()


def test_removing_a_copy_another_process_is_removing_is_not_an_error(tmp_path: Path) -> None:
    copy = tmp_path / "td-ws-1-abc"
    (copy / "a" / "b").mkdir(parents=True)
    (copy / "a" / "b" / "f.py").write_text("x = 1\n")
    real_unlink = os.unlink

    with pytest.MonkeyPatch.context() as patch:

        def racing(path: str, *args: object, **kwargs: object) -> None:
            patch.setattr(os, "unlink", real_unlink)
            shutil.rmtree(copy)  # the other process finishes first
            real_unlink(path, *args, **kwargs)  # type: ignore[arg-type]

        patch.setattr(os, "unlink", racing)
        remove_workspace(copy)
        assert os.unlink is real_unlink  # the race did happen
    assert not copy.exists()


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A host folder a job's links point at: it must come through every removal intact."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep")
    return folder


def _intact(outside: Path) -> bool:
    return (outside / "keep.txt").read_text() == "keep" and os.listdir(outside) == ["keep.txt"]


def _private_root(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    root.mkdir()
    os.chmod(root, 0o711)
    return root


def test_a_dead_audits_copy_is_swept_whichever_job_uid_owns_it(tmp_path: Path) -> None:
    root = _private_root(tmp_path)
    stale = root / f"td-ws-{_dead_pid()}-abc"
    (stale / "pkg").mkdir(parents=True)
    (stale / "pkg" / "napping.py").write_text("import time\n")
    if os.geteuid() == 0:
        hand_over(stale, 54321, 54321)  # as the sandbox does before the job runs
    live = root / f"td-ws-{os.getpid()}-def"
    live.mkdir()
    unrelated = root / "keep-me"
    unrelated.mkdir()
    assert sweep_stale_copies([root]) == [str(stale)]
    assert sorted(os.listdir(root)) == ["keep-me", live.name]


def test_a_live_process_that_started_after_the_copy_was_made_reused_its_makers_pid() -> None:
    later = subprocess.Popen(["sleep", "30"])
    try:
        assert _alive(later.pid, time.time())  # it may have made a copy just now: kept
        assert not _alive(later.pid, time.time() - 60)  # a copy a minute old is not its own
    finally:
        later.kill()
        later.wait()


def test_a_link_named_like_a_copy_is_not_followed(tmp_path: Path, outside: Path) -> None:
    root = _private_root(tmp_path)
    link = root / f"td-ws-{_dead_pid()}-link"
    link.symlink_to(outside)
    assert sweep_stale_copies([root]) == []
    assert link.is_symlink() and _intact(outside)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own files as another uid")
def test_in_a_shared_folder_only_this_users_copies_are_swept(tmp_path: Path) -> None:
    shared = tmp_path / "scratch"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    dead = _dead_pid()
    mine, theirs = shared / f"td-ws-{dead}-mine", shared / f"td-ws-{dead}-theirs"
    mine.mkdir()
    theirs.mkdir()
    os.chown(theirs, 54321, 54321)
    assert sweep_stale_copies([shared]) == [str(mine)]
    assert theirs.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start a process as another uid")
def test_a_copy_whose_job_still_runs_is_kept(tmp_path: Path) -> None:
    root = _private_root(tmp_path)
    stale = root / f"td-ws-{_dead_pid()}-abc"
    stale.mkdir()
    hand_over(stale, 54322, 54322)
    job = subprocess.Popen(["sleep", "30"], user=54322, group=54322)
    try:
        assert sweep_stale_copies([root]) == []
        assert stale.exists()
    finally:
        job.kill()
        job.wait()
    assert sweep_stale_copies([root]) == [str(stale)]


def test_a_workspace_swapped_for_a_link_loses_the_link_only(tmp_path: Path, outside: Path) -> None:
    workspace = tmp_path / "td-ws-1-abc"
    workspace.symlink_to(outside)
    remove_workspace(workspace)
    assert not workspace.is_symlink() and _intact(outside)


def test_links_out_of_locked_folders_are_removed_not_followed(
    repo: Path, tmp_path: Path, outside: Path
) -> None:
    workspace = stage_workspace(repo, tmp_path)
    (workspace / "escape").symlink_to(outside)
    (workspace / "pkg" / "keep-link").symlink_to(outside / "keep.txt")
    (workspace / "pkg" / "deeper").mkdir()
    (workspace / "pkg" / "deeper" / "dir-link").symlink_to(outside, target_is_directory=True)
    os.chmod(workspace / "pkg" / "model.py", 0o400)
    os.chmod(workspace / "pkg" / "deeper", 0o500)
    os.chmod(workspace / "pkg", 0)
    os.chmod(workspace, 0o500)
    remove_workspace(workspace)
    assert not workspace.exists() and _intact(outside)
    assert os.stat(outside).st_mode & 0o777 != 0o700  # no chmod went through a link


@pytest.fixture
def fast_scratch(tmp_path: Path) -> Iterator[Path]:
    """A folder on tmpfs where there is one (a deep tree's rmdirs cost ms each on ext4)."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        folder = Path(tempfile.mkdtemp(prefix="td-unit-", dir="/dev/shm"))
        yield folder
        subprocess.run(["rm", "-rf", folder], check=False)  # any depth, whatever the test did
    else:
        yield tmp_path


def test_a_tree_nested_deeper_than_python_recurses_is_removed(fast_scratch: Path) -> None:
    workspace = fast_scratch / "td-ws-1-deep"
    workspace.mkdir()
    folder = os.open(workspace, os.O_RDONLY)
    for _ in range(1500):  # a path far over PATH_MAX, nesting over the recursion limit
        os.mkdir("d", dir_fd=folder)
        inner = os.open("d", os.O_RDONLY, dir_fd=folder)
        os.close(folder)
        folder = inner
    os.close(folder)
    remove_workspace(workspace)
    assert os.listdir(fast_scratch) == []
