"""Apply and undo on real files in a real git repository."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from torchdoctor.agent.fixes.apply import apply_fixes, journal_root, undo
from torchdoctor.agent.fixes.diffs import unified_diff
from torchdoctor.agent.models import Evidence, Finding, Fix, Severity, Status

SOURCE = "import torch\n\nfor x in data:  # keep\n    loss.backward()\n    opt.step()\n"
FIXED = SOURCE.replace("data:  # keep\n", "data:  # keep\n    opt.zero_grad(set_to_none=True)\n")


def _git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(root), *args],
        check=True,
        capture_output=True,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t",
        },
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "train.py").write_bytes(SOURCE.encode())
    (tmp_path / "train.py").chmod(0o750)
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "train.py")
    _git(tmp_path, "commit", "-q", "-m", "init")
    return tmp_path


def verified_finding(diff: str, *, verified: bool = True, phase: int = 2) -> Finding:
    return Finding(
        id="TD-zero",
        rule="zero-grad-missing",
        checkpoint=4 if phase == 2 else 6,
        phase=phase,
        severity=Severity.HIGH,
        title="t",
        file="train.py",
        line=3,
        end_line=3,
        evidence=[Evidence(source="test", message="m")],
        status=Status.VERIFIED if verified else Status.OPEN,
        fix=Fix(diff=diff, verified=verified),
    )


def test_apply_then_undo_restores_the_bytes_and_mode(repo: Path) -> None:
    diff = unified_diff("train.py", SOURCE, FIXED)
    result = apply_fixes(repo, [verified_finding(diff)])
    assert result.refused is None and result.applied == ["TD-zero"]
    assert (repo / "train.py").read_text() == FIXED
    assert (repo / "train.py").stat().st_mode & 0o777 == 0o750
    assert result.journal is not None and Path(result.journal).is_relative_to(journal_root(repo))
    assert not (repo / ".torchdoctor").exists()
    assert Path(result.journal).stat().st_mode & 0o777 == 0o700
    restored = undo(repo)
    assert restored.refused is None and restored.restored == ["train.py"]
    assert (repo / "train.py").read_bytes() == SOURCE.encode()
    assert (repo / "train.py").stat().st_mode & 0o777 == 0o750
    assert undo(repo).refused is not None  # nothing left to undo


def test_apply_refuses_on_a_dirty_work_tree_unless_forced(repo: Path) -> None:
    (repo / "notes.txt").write_text("uncommitted")
    diff = unified_diff("train.py", SOURCE, FIXED)
    refused = apply_fixes(repo, [verified_finding(diff)])
    assert refused.refused is not None and "notes.txt" in refused.refused
    assert (repo / "train.py").read_text() == SOURCE
    forced = apply_fixes(repo, [verified_finding(diff)], force=True)
    assert forced.applied == ["TD-zero"]


def test_undo_refuses_when_the_file_changed_since(repo: Path) -> None:
    apply_fixes(repo, [verified_finding(unified_diff("train.py", SOURCE, FIXED))])
    (repo / "train.py").write_text(FIXED + "# edited by hand\n")
    refused = undo(repo)
    assert refused.refused is not None and "train.py" in refused.refused
    assert undo(repo, force=True).restored == ["train.py"]
    assert (repo / "train.py").read_bytes() == SOURCE.encode()


def test_unverified_and_gated_fixes_are_not_written(repo: Path) -> None:
    diff = unified_diff("train.py", SOURCE, FIXED)
    unverified = verified_finding(diff, verified=False)
    result = apply_fixes(repo, [unverified])
    assert result.applied == [] and "not verified" in result.skipped["TD-zero"]
    critical = verified_finding(diff).model_copy(
        update={
            "id": "TD-crit",
            "phase": 1,
            "checkpoint": 1,
            "severity": Severity.CRITICAL,
            "status": Status.OPEN,
            "fix": None,
        }
    )
    perf = verified_finding(diff, phase=4)
    gated = apply_fixes(repo, [critical, perf])
    assert gated.applied == [] and "TD-crit" in gated.skipped["TD-zero"]
    assert (repo / "train.py").read_text() == SOURCE


def test_a_fix_that_no_longer_applies_is_skipped(repo: Path) -> None:
    diff = unified_diff("train.py", SOURCE.replace("opt", "optimizer"), FIXED)
    result = apply_fixes(repo, [verified_finding(diff)])
    assert result.applied == [] and "does not apply" in result.skipped["TD-zero"]
