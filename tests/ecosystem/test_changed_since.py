"""`--changed-since REF`: the whole audit runs, the report keeps findings on changed lines, and
git runs on the hostile repository without running anything the repository names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES, REPO
from torchdoctor.agent.changes import changed_in, changed_lines
from torchdoctor.agent.gitsafe import git_environment
from torchdoctor.agent.workspace import InputError

BUGGY = (EXAMPLES / "train_buggy.py").read_text(encoding="utf-8")


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t", *args],
        check=True,
        capture_output=True,
        env={"PATH": os.environ["PATH"], "GIT_CONFIG_GLOBAL": "/dev/null", "HOME": "/nonexistent"},
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A committed training script whose .git/config and .gitattributes name programs that
    write a marker file if git ever runs them."""
    root = tmp_path / "repo"
    (root / "src").mkdir(parents=True)
    (root / "src" / "train.py").write_text(BUGGY, encoding="utf-8")
    (root / "src" / "untouched.py").write_text(BUGGY, encoding="utf-8")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "base")
    marker = tmp_path / "pwned"
    payload = f"sh -c 'touch {marker}'"
    for key, value in {
        "core.fsmonitor": payload,
        "core.pager": payload,
        "diff.external": payload,
        "diff.evil.textconv": payload,
        "filter.evil.clean": payload,
        "filter.evil.process": payload,
        "filter.evil.required": "true",
    }.items():
        git(root, "config", key, value)
    (root / ".gitattributes").write_text("*.py filter=evil diff=evil\n", encoding="utf-8")
    (root / ".git" / "hooks" / "post-checkout").write_text(f"#!/bin/sh\n{payload}\n")
    return root


def test_changed_in_marks_edits_insertions_and_deletion_sites() -> None:
    old = ["a", "b", "c", "d"]
    assert changed_in(old, ["a", "B", "c", "d"]) == {2}
    assert changed_in(old, ["a", "b", "x", "c", "d"]) == {3}
    assert changed_in(old, ["a", "c", "d"]) == {1, 2}
    assert changed_in(old, old) == set()


def test_changed_lines_from_git_objects_never_run_repository_programs(repo: Path) -> None:
    train = repo / "src" / "train.py"
    lines = train.read_text(encoding="utf-8").splitlines()
    lines[58] += "  # edited"
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (repo / "src" / "new.py").write_text("import torch\n", encoding="utf-8")
    changes = changed_lines(repo / "src", "HEAD", ["train.py", "untouched.py", "new.py"])
    assert changes == {"train.py": {59}, "untouched.py": set(), "new.py": None}
    assert not (repo.parent / "pwned").exists()


def test_git_gets_an_allow_listed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.setenv("GIT_DIR", "/elsewhere")
    env = git_environment()
    assert "OPENAI_API_KEY" not in env and "GIT_DIR" not in env
    assert env["GIT_CONFIG_NOSYSTEM"] == "1" and env["GIT_CONFIG_GLOBAL"] == "/dev/null"


def test_bad_refs_are_input_errors(repo: Path) -> None:
    for ref in ("--output=/tmp/x", "no-such-ref", ""):
        with pytest.raises(InputError):
            changed_lines(repo, ref, ["src/train.py"])


def test_cli_reports_only_findings_on_changed_lines(repo: Path) -> None:
    train = repo / "src" / "train.py"
    lines = train.read_text(encoding="utf-8").splitlines()
    lines[58] += "  # edited"  # line 59: running_loss += total (loss-graph-accumulation)
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    command = [sys.executable, "-m", "torchdoctor", "audit", "src", "--no-ledger"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [*command, "--format", "json", "--changed-since", "HEAD", "--fail-on", "high"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1, done.stderr  # the kept finding is high
    report = json.loads(done.stdout)
    assert [(f["file"], f["line"], f["rule"]) for f in report["findings"]] == [
        ("train.py", 59, "loss-graph-accumulation")
    ]
    assert report["summary"]["total"] == 1
    assert any("changed since HEAD" in note for note in report["summary"]["notes"])
    assert not (repo.parent / "pwned").exists()
    bad = subprocess.run(
        [*command, "--changed-since", "nope"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
