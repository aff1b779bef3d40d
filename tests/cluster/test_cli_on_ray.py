"""`TORCHDOCTOR_EXECUTOR=ray torchdoctor audit` on the real two-node local cluster
(tests/cluster/conftest.py): the static pass sharded over Ray tasks, the instrumented run and
every fix verification sent to the node holding the GPU stand-in, and the report the local
executor gives for the same command (same findings, same fixes, same verdicts)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.api.test_api import BUGGY
from tests.cluster.conftest import GPU_STAND_IN
from tests.cluster.ray_cluster import QUIET_ENV, RayCluster
from tests.integration.test_audit_resume import TRAIN
from tests.integration.test_cli import REPO

pytestmark = pytest.mark.slow

# One fixable finding in the script the run reaches (zero-grad-missing; seeded, so no
# no-torch-seed and its extra runs), a module with many findings whose fixes the run does not
# reach, and small modules that take the tree over the shard threshold.
SEEDED_TRAIN = TRAIN.replace(
    "from torch import nn\n", "from torch import nn\n\ntorch.manual_seed(0)\n"
)
BLOCK = '''"""Block {index} of the model."""

from torch import nn


class Block{index}(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x):
        return self.linear(x).relu()
'''
AUDIT = ["--run", "python train.py", "--steps", "4", "--fix", "--format", "json"]
AUDIT += ["--offline", "--no-linters", "--probes", "cheap"]
ON_NODE = re.compile(r"sandbox job on Ray node [0-9a-f]{12} \((\w+) task\)")


def audit(project: Path, home: Path, settings: dict[str, str]) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHDOCTOR_")}
    env.update(TORCHDOCTOR_HOME=str(home), **settings)
    return subprocess.Popen(
        [sys.executable, "-m", "torchdoctor", "audit", str(project), *AUDIT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )


def copy(project: Path, to: Path) -> Path:
    return Path(shutil.copytree(project, to))


def finished(audit: subprocess.Popen[str]) -> tuple[dict[str, Any], str]:
    """The report and the progress lines of an audit that succeeded."""
    stdout, stderr = audit.communicate(timeout=600)
    assert audit.returncode == 0, stderr
    report: dict[str, Any] = json.loads(stdout)
    return report, stderr


def steps(fix: dict[str, Any]) -> list[tuple[str, bool]]:
    return [(step["step"], step["ok"]) for step in fix["verification"]]


def verdicts(report: dict[str, Any]) -> list[tuple[Any, ...]]:
    """What a fix came to: its diff, whether it was verified, each step's name and result
    (the steps' details hold timings and losses, which differ from run to run)."""
    return [
        (f["id"], f["fix"]["diff"], f["fix"]["verified"], *steps(f["fix"]))
        for f in report["findings"]
        if f["fix"] is not None
    ]


def test_the_cli_on_ray_shards_verifies_on_the_gpu_node_and_gives_the_local_report(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    (project / "pkg").mkdir(parents=True)
    for index in range(23):
        (project / "pkg" / f"block_{index:02d}.py").write_text(BLOCK.format(index=index))
    (project / "pkg" / "legacy.py").write_text(BUGGY)
    (project / "train.py").write_text(SEEDED_TRAIN)

    settings = {
        **{k: ray_cluster.env[k] for k in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")},
        **QUIET_ENV,
        "TORCHDOCTOR_EXECUTOR": "ray",
        "TORCHDOCTOR_RAY_GPU_RESOURCE": next(iter(GPU_STAND_IN)),
    }
    # Side by side: the two audits' sandbox runs are mostly waiting on each other's cores.
    # Each on its own copy: an audit writes its ledger (ISSUES.md) into the tree.
    local = audit(copy(project, tmp_path / "local"), tmp_path / "home-local", {})
    on_ray = audit(copy(project, tmp_path / "ray"), tmp_path / "home-ray", settings)
    expected, local_said = finished(local)
    got, ray_said = finished(on_ray)

    assert re.search(r"static pass: 25 files in \d+ Ray tasks on \d node\(s\)", ray_said)
    assert [f["id"] for f in got["findings"]] == [f["id"] for f in expected["findings"]]
    assert verdicts(got) == verdicts(expected)
    fixed = [(f["file"], f["rule"]) for f in got["findings"] if f["fix"] and f["fix"]["verified"]]
    assert fixed == [("train.py", "zero-grad-missing")], verdicts(got)
    runs = [(r["command"], r["outcome"]) for r in got["provenance"]["extra"]["runs"]]
    assert runs == [(r["command"], r["outcome"]) for r in expected["provenance"]["extra"]["runs"]]

    # Every sandbox job (the run, then each fix's smoke run) was a Ray task that asked for the
    # GPU stand-in; the local audit sent none.
    smoke_runs = sum(
        step["step"] == "smoke-run" and step["ok"]
        for f in got["findings"]
        if f["fix"] is not None
        for step in f["fix"]["verification"]
    )
    kinds = ON_NODE.findall(ray_said)
    assert smoke_runs >= 1 and len(kinds) >= 1 + smoke_runs, ray_said
    assert set(kinds) == set(GPU_STAND_IN), kinds
    assert not ON_NODE.search(local_said)
