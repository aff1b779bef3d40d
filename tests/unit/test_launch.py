"""`--run` commands: plain Python, torchrun and `python -m torch.distributed.run` forms."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from torchdoctor.agent.config import RunBudget
from torchdoctor.agent.harness import EVIDENCE_FILE, Harness, HarnessCall, harness_limits
from torchdoctor.agent.launch import Launch, parse_launch
from torchdoctor.sandbox import PACKAGE_ROOT
from torchdoctor.sandbox.config import DockerConfig, LocalConfig, get_sandbox
from torchdoctor.sandbox.local import _import_path
from torchdoctor.sandbox.models import Job


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("python -u train.py --lr 1", Launch(script="train.py", args=["--lr", "1"])),
        (
            "torchrun --nproc-per-node 2 train.py --epochs 1",
            Launch(script="train.py", args=["--epochs", "1"], nproc=2),
        ),
        ("torchrun --nproc_per_node=4 --standalone train.py", Launch(script="train.py", nproc=4)),
        (
            "python -m torch.distributed.run --nnodes 1 --nproc-per-node 2 t.py",
            Launch(script="t.py", nproc=2),
        ),
        (
            "torchrun --rdzv-endpoint host:29400 --nproc-per-node auto t.py",
            Launch(script="t.py", nproc=2),
        ),
        ("torchrun t.py", Launch(script="t.py")),
        ("/usr/bin/python3.11 train.py -x", Launch(script="train.py", args=["-x"])),
        ("train.py --epochs 1", Launch(script="train.py", args=["--epochs", "1"])),
        (  # graphsage-simple's entry point: `python -m graphsage.model`
            "python -u -m graphsage.model --epochs 1",
            Launch(script="graphsage/model.py", args=["--epochs", "1"], module="graphsage.model"),
        ),
    ],
)
def test_commands_name_the_script_its_arguments_and_the_process_count(
    command: str, expected: Launch
) -> None:
    assert parse_launch(command) == expected


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ("torchrun --nnodes 2 --nproc-per-node 2 t.py", "single node"),
        ("torchrun -m pkg.train", "not a module"),
        ("torchrun --nproc-per-node 64 t.py", "1-8"),
        ("torchrun --no-python ./run.sh", "no Python script"),
        ("torchrun --bogus 1 t.py", "unknown launcher option"),
        ("bash train.sh", "expected"),
        ("python -m 3d.train", "not a module name"),
    ],
)
def test_commands_the_sandbox_cannot_run_are_refused_with_the_reason(
    command: str, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_launch(command)


def test_a_distributed_run_launches_the_harness_on_every_rank_on_loopback(
    tmp_path: Path,
) -> None:
    call = HarnessCall(script="train.py", args=["--lr", "1"], nproc=2)
    job = Harness(get_sandbox("local"), RunBudget(processes=100)).job(tmp_path, call)
    assert job.module == "torch.distributed.run" and job.limits.processes == 200
    launcher = job.args[: job.args.index("torchdoctor.sandbox.probes")]
    assert launcher[-1] == "-m"
    assert launcher[launcher.index("--nproc-per-node") + 1] == "2"
    assert launcher[launcher.index("--master-addr") + 1] == "127.0.0.1"
    assert job.args[-3:] == ["--", "--lr", "1"]


def test_each_backend_resolves_a_module_job_its_own_way(tmp_path: Path) -> None:
    """The project's interpreter and import path on this host; the image's in a container."""
    job = Harness(get_sandbox("local"), RunBudget()).job(tmp_path, HarnessCall(script="t.py"))
    # the harness's only variable: a fixed string-hash seed, so compared runs order sets alike
    assert job.command == [] and job.env == {"PYTHONHASHSEED": "0"}
    assert job.argv("/venv/bin/python")[:3] == [
        "/venv/bin/python",
        "-m",
        "torchdoctor.sandbox.probes",
    ]
    assert _import_path(job)["PYTHONPATH"] == str(PACKAGE_ROOT)
    assert DockerConfig().python == "python" and LocalConfig().python == Path(sys.executable)
    with pytest.raises(ValueError, match="either a command or a module"):
        Job(workspace=tmp_path, command=["python", "t.py"], module="m")
    with pytest.raises(ValueError, match="either a command or a module"):
        Job(workspace=tmp_path)


def test_an_audited_trees_run_budget_may_lower_the_limits_never_raise_them() -> None:
    asked = RunBudget(wall_s=60, memory_mb=10**6, processes=10**5, cpu_s=7)
    capped = asked.capped()
    assert (capped.wall_s, capped.memory_mb, capped.processes, capped.cpu_s) == (60, 8192, 256, 7)
    limits = harness_limits(capped, nproc=2, extra_memory_mb=100)
    assert (limits.memory_mb, limits.processes, limits.cpu_s) == (8292, 512, 7)


def test_a_calls_own_wall_limit_lowers_the_budgets_never_raises_it(tmp_path: Path) -> None:
    """A run left to finish gets what the fix time leaves: the sandbox kills it by then and
    the harness stops itself its margin before, so the evidence is still written."""
    harness = Harness(get_sandbox("local"), RunBudget(wall_s=300))
    for asked, wall in ((None, 300.0), (120.0, 120.0), (900.0, 300.0)):
        job = harness.job(tmp_path, HarnessCall(script="train.py", wall_s=asked))
        assert job.limits.wall_s == wall
        assert job.args[job.args.index("--time-budget") + 1] == f"{wall - 20:g}"


PACKAGE_TRAIN = """import argparse

import torch

from .model import make_model

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.1)
args = parser.parse_args()
model = make_model()
optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
for _ in range(10):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
"""


def test_a_module_run_is_launched_as_python_m_with_its_relative_imports(tmp_path: Path) -> None:
    """`python -m pkg.train`: the harness is told the module, and runs it as Python would (a
    relative import, which `runpy.run_path` of the file cannot resolve)."""
    launch = parse_launch("python -m pkg.train --lr 0.5")
    call = HarnessCall(script=launch.script, args=launch.args, module=launch.module, steps=3)
    job = Harness(get_sandbox("local"), RunBudget()).job(tmp_path, call)
    assert job.args[job.args.index("--module") + 1] == "pkg.train"
    assert job.args[0] == "pkg/train.py" and job.args[-2:] == ["--lr", "0.5"]
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "model.py").write_text(
        "import torch\n\ndef make_model():\n    return torch.nn.Linear(4, 1)\n"
    )
    (tmp_path / "pkg" / "train.py").write_text(PACKAGE_TRAIN)
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    subprocess.run(
        [sys.executable, "-m", job.module or "", *job.args],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )
    document = json.loads((tmp_path / EVIDENCE_FILE).read_text())
    assert document["outcome"]["kind"] == "completed-steps", document["outcome"]
