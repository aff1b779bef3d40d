"""The published pre-commit hook, installed the way users get it: a `.pre-commit-config.yaml`
names this repository at a revision, and `pre-commit run` builds the hook's virtual environment
from it (`language: python`, dependencies from the package registry) once, then runs the hook on
a temporary git repository's file, the second time in the environment it built."""

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


def test_the_hook_fails_on_the_bug_then_passes_after_the_fix(tmp_path: Path) -> None:
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
    # One commit of this tree: the revision the configuration names, as a user's names a tag.
    hook_repo = committed_copy(tmp_path / "hook-repo", env)
    revision = subprocess.run(
        ["git", "rev-parse", "HEAD"],
        cwd=hook_repo,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    config = {
        "repos": [{"repo": str(hook_repo), "rev": revision, "hooks": [{"id": "torchdoctor"}]}]
    }
    (project / ".pre-commit-config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True, env=env)
    subprocess.run(["git", "add", "-A"], cwd=project, check=True, env=env)

    def hook() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [pre_commit, "run", "torchdoctor", "--files", "train.py"],
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
        environments = list((tmp_path / "pre-commit-home").glob("repo*/py_env-*"))
        assert len(environments) == 1, environments  # built once, the second run used it
    finally:
        shutil.rmtree(env["TORCHDOCTOR_RUNTIME_DIR"], ignore_errors=True)
