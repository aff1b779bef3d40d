"""`audit --fix`, `--apply` and `undo` as a user runs them, on a real git repository.

The fix is verified by running the script in the sandbox (real subprocesses), before and after.
That `--fix` alone writes nothing is pinned by test_audit_resume's uninterrupted `--fix` audit
(one audit fewer here).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_cli import torchdoctor

TRAIN = """import torch
from torch import nn

torch.manual_seed(0)
model = nn.Linear(8, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
data = torch.randn(64, 8)
target = data.sum(dim=1, keepdim=True)
for step in range(40):
    loss = ((model(data) - target) ** 2).mean()
    loss.backward()
    optimizer.step()
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "train.py").write_text(TRAIN)
    git(root, "init", "-q")
    git(root, "-c", "user.email=t@t", "-c", "user.name=t", "add", "train.py")
    git(root, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    return root


def test_fix_is_verified_then_applied_then_undone_byte_exact(repo: Path) -> None:
    original = (repo / "train.py").read_bytes()
    run = ["--run", "python train.py", "--steps", "6", "--probes", "cheap", "--no-ledger"]
    run += ["--format", "json"]
    applied = torchdoctor("audit", str(repo), *run, "--apply", "--yes")
    assert applied.returncode == 0, applied.stderr
    finding = next(
        f for f in json.loads(applied.stdout)["findings"] if f["rule"] == "zero-grad-missing"
    )
    assert finding["fix"]["verified"] is True, finding["fix"]["verification"]
    assert finding["status"] == "verified"
    steps = [v["step"] for v in finding["fix"]["verification"]]
    assert len(steps) >= 4 and all(v["ok"] for v in finding["fix"]["verification"])
    assert "zero_grad" in finding["fix"]["diff"]
    assert b"zero_grad" in (repo / "train.py").read_bytes()

    # The dirty tree is refused before anything is written; no run is needed to show it.
    refused = torchdoctor("audit", str(repo), "--no-ledger", "--apply", "--yes")
    assert refused.returncode == 2 and "uncommitted changes" in refused.stderr

    restored = torchdoctor("undo", str(repo))
    assert restored.returncode == 0, restored.stderr
    assert (repo / "train.py").read_bytes() == original
