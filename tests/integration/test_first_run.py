"""The README's first command on a fresh clone: the report and nothing else on stdout, and a
clean `git status` afterwards (the bundled example's ledger is not a tracked file).

The set-up half of that command (`scripts/setup.sh`) is checked by `scripts/test.sh`, which CI
runs on a fresh machine and which fails if set-up writes anything to stdout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


def _git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_NOSYSTEM": "1"}
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


@pytest.mark.slow
def test_first_audit_of_a_fresh_clone_prints_only_the_report_and_dirties_nothing(
    tmp_path: Path,
) -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: nothing to clone")
    clone = tmp_path / "clone"
    _git("clone", "--quiet", "--no-hardlinks", str(REPO), str(clone), cwd=tmp_path)
    env = {
        **os.environ,
        "PYTHONPATH": str(clone),
        "TORCHDOCTOR_LINTERS": "1",
        "PYTHONWARNINGS": "default",  # warnings would land on stderr, never on stdout
    }
    done = subprocess.run(
        [sys.executable, "-m", "torchdoctor", "audit", "examples/train_buggy.py"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("# torchdoctor audit report\n")
    assert "Warning" not in done.stdout and "Traceback" not in done.stdout
    assert _git("status", "--porcelain", cwd=clone) == ""
    assert (clone / "examples" / "ISSUES.md").is_file(), "the ledger was written, untracked"
