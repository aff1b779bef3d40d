"""The published pre-commit hook, installed the way users get it: `pre-commit try-repo` builds
its own virtual environment from this repository (`language: python`, dependencies from the
package registry) and runs the hook on a temporary git repository's file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.ecosystem.clean_tree import NO_INSTALL_BYTECODE, committed_copy

pytestmark = pytest.mark.slow

BUGGY = """\
import torch
import torch.nn.functional as F
from torch import nn


def train(model: nn.Module, loader, optimizer) -> None:
    model.train()
    for x, y in loader:
        optimizer.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(torch.softmax(logits, dim=-1), y)
        loss.backward()
        optimizer.step()
"""
FIXED = BUGGY.replace("torch.softmax(logits, dim=-1)", "logits")


def test_hook_manifest_is_static_and_takes_filenames() -> None:
    (hook,) = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text(encoding="utf-8"))
    assert hook["id"] == "torchdoctor" and hook["language"] == "python"
    assert "--static-only" in hook["entry"] and hook.get("pass_filenames", True)
    assert hook["require_serial"] is True and hook["types"] == ["python"]


def test_try_repo_fails_on_the_bug_then_passes_after_the_fix(tmp_path: Path) -> None:
    pre_commit = shutil.which("pre-commit", path=os.path.dirname(sys.executable))
    if pre_commit is None:
        pytest.skip("pre-commit is not installed (dev extra)")
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text(BUGGY, encoding="utf-8")
    env = {
        **os.environ,
        "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"),
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
        # The hook's daemon gets a folder of its own, removed at the end: it then exits.
        "TORCHDOCTOR_RUNTIME_DIR": tempfile.mkdtemp(prefix="tdh-"),
        # pre-commit's `pip install` of the hook and its dependencies
        **NO_INSTALL_BYTECODE,
    }
    subprocess.run(["git", "init", "-q"], cwd=project, check=True, env=env)
    subprocess.run(["git", "add", "train.py"], cwd=project, check=True, env=env)
    # One commit of this tree, so both runs use the same hook revision (one installation).
    hook_repo = committed_copy(tmp_path / "hook-repo", env)

    def hook() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [pre_commit, "try-repo", str(hook_repo), "torchdoctor", "--files", "train.py"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )

    try:
        failing = hook()
        assert failing.returncode == 1, failing.stdout[-3000:] + failing.stderr[-3000:]
        assert "double-softmax" in failing.stdout and "Failed" in failing.stdout
        assert "\ntrain.py:11:" in failing.stdout, "the file as pre-commit named it"
        (project / "train.py").write_text(FIXED, encoding="utf-8")
        passing = hook()
        assert passing.returncode == 0, passing.stdout[-3000:] + passing.stderr[-3000:]
        assert "Passed" in passing.stdout
    finally:
        shutil.rmtree(env["TORCHDOCTOR_RUNTIME_DIR"], ignore_errors=True)
