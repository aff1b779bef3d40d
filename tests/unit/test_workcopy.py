"""A fix is tried on a private copy of the tree: what the copy keeps, relinks and leaves out,
and that nothing written in it reaches the original (an absolute link inside the tree, copied
as it was, once led a patch straight into the user's file)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from torchdoctor.agent.fixes.workcopy import workspace_copy
from torchdoctor.sandbox.workspace import WorkspaceError, stage_workspace


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "lib").mkdir(parents=True)
    (root / "lib" / "model.py").write_text("x = 1\n", encoding="utf-8")
    (root / "train.py").write_text("import lib.model\n", encoding="utf-8")
    return root


def test_an_absolute_link_inside_the_tree_is_relinked_into_the_copy(tree: Path) -> None:
    os.symlink(tree / "lib", tree / "src")  # absolute, and inside the tree
    with workspace_copy(tree) as copy:
        assert not os.path.isabs(os.readlink(copy / "src"))
        (copy / "src" / "model.py").write_text("x = 2\n", encoding="utf-8")
        assert (copy / "lib" / "model.py").read_text(encoding="utf-8") == "x = 2\n"
    assert (tree / "lib" / "model.py").read_text(encoding="utf-8") == "x = 1\n"


def test_links_leaving_the_tree_and_special_files_are_left_out(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "datasets"
    outside.mkdir()
    (outside / "big.bin").write_bytes(b"\0" * 16)
    os.symlink(outside, tree / "data")
    os.mkfifo(tree / "pipe")
    with workspace_copy(tree) as copy:
        assert not os.path.lexists(copy / "data")
        assert not os.path.lexists(copy / "pipe")
        assert (copy / "train.py").is_file()


def test_virtualenvs_vcs_and_the_audits_own_folder_are_not_copied(tree: Path) -> None:
    for name in (".git", ".venv", "venv", ".torchdoctor", "__pycache__"):
        (tree / name).mkdir()
        (tree / name / "file").write_text("kept out\n", encoding="utf-8")
    with workspace_copy(tree) as copy:
        assert sorted(p.name for p in copy.iterdir()) == ["lib", "train.py"]


def test_the_copy_is_removed_afterwards_even_when_the_body_fails(tree: Path) -> None:
    with pytest.raises(RuntimeError), workspace_copy(tree) as copy:
        raise RuntimeError("a verification step crashed")
    assert not copy.exists()
    assert (tree / "train.py").is_file()


def test_a_link_loop_is_left_out_of_a_fix_copy_and_refuses_a_runs_copy(tree: Path) -> None:
    """A hostile tree's `a -> b -> a`: resolving it raises RuntimeError, which a copy must
    turn into its own answer (left out, or a one-line refusal), never a traceback."""
    os.symlink("b", tree / "a")
    os.symlink("a", tree / "b")
    with workspace_copy(tree) as copy:
        assert sorted(p.name for p in copy.iterdir()) == ["lib", "train.py"]
    with pytest.raises(WorkspaceError, match="resolves nowhere"):
        stage_workspace(tree)
