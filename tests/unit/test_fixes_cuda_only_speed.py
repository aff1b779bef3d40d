"""A performance fix that only CUDA switches on is not timed on a run without CUDA.

Shape from a tutorial RNN classifier audited on a CPU-only machine: the no-amp fix wraps the
step in `torch.autocast("cuda", enabled=torch.cuda.is_bf16_supported(...))`, so both
versions run the same float32 code there; load on the machine between the baseline and the
patched runs was then reported as an 86.7% verified speed-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_fixes_smoke import document
from torchdoctor.agent.fixes import verify
from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.models import FixKind, SmokeRun
from torchdoctor.agent.fixes.smoke import smoke_run_from_evidence
from torchdoctor.agent.fixes.verify import (
    CUDA_ONLY_WITHOUT_CUDA,
    DEVICE_ADVICE_ON_CPU,
    FixSpec,
    Verifier,
)

# the baseline ran while the machine was busy, the patched runs after: a "speed-up" that
# only the load made
SLOW = [0.47 + 0.001 * i for i in range(19)]
FAST = [0.063 + 0.001 * i for i in range(19)]


def _timed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every timing run the verifier starts: the patched ones are fast, the rest slow."""
    started: list[Path] = []

    def fake_smoke_run(_runner: Any, workspace: Path, *_a: Any, **_k: Any) -> SmokeRun:
        started.append(workspace)
        return SmokeRun(ok=True, step_times_s=SLOW if workspace.name == "root" else FAST)

    monkeypatch.setattr(verify, "smoke_run", fake_smoke_run)
    return started


def _verifier(tmp_path: Path, *, cuda: bool) -> Verifier:
    root = tmp_path / "root"
    root.mkdir()
    baseline = SmokeRun(ok=True, step_times_s=SLOW, cuda_available=cuda)
    return Verifier(root, object(), ["python", "train.py"], baseline=baseline)  # type: ignore[arg-type]


def _spec(rule: str) -> FixSpec:
    codemod = codemod_for(rule)
    assert codemod is not None and codemod.kind is FixKind.PERFORMANCE
    return FixSpec.of(codemod)


@pytest.mark.parametrize(
    "rule", ["no-amp", "unfused-optimizer", "pin-memory-off", "no-torch-compile"]
)
def test_a_cuda_only_fix_is_not_timed_without_cuda(
    rule: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = _timed(monkeypatch)
    verifier = _verifier(tmp_path, cuda=False)
    after = SmokeRun(ok=True, step_times_s=FAST, cuda_available=False)

    result = verifier._speed(tmp_path / "patched", after, _spec(rule))

    assert (result.step, result.ok, result.detail) == ("speed-up", False, CUDA_ONLY_WITHOUT_CUDA)
    assert started == []  # no timing run spent on it


def test_the_same_fix_is_timed_where_cuda_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = _timed(monkeypatch)
    verifier = _verifier(tmp_path, cuda=True)
    after = SmokeRun(ok=True, step_times_s=FAST, cuda_available=True)

    result = verifier._speed(tmp_path / "patched", after, _spec("no-amp"))

    assert result.ok and "faster beyond noise" in result.detail
    assert started  # interleaved timing runs of both versions


def test_a_fix_that_acts_on_the_cpu_too_is_timed_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = _timed(monkeypatch)
    verifier = _verifier(tmp_path, cuda=False)
    after = SmokeRun(ok=True, step_times_s=FAST, cuda_available=False)

    result = verifier._speed(tmp_path / "patched", after, _spec("dataloader-sync"))

    assert result.step == "speed-up" and result.detail != CUDA_ONLY_WITHOUT_CUDA
    assert started


def test_the_run_says_whether_it_saw_cuda() -> None:
    assert smoke_run_from_evidence(document()).cuda_available is False
    seen = document(device={"cuda_available": True, "cuda_used": True, "name": "cuda:0"})
    assert smoke_run_from_evidence(seen).cuda_available is True


def _untimed_after_smoke_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: FixSpec, *, cuda: bool
) -> str:
    """The compile fix of a small script verified as `spec`: the steps must stop after its
    smoke run; what the last one says."""
    from torchdoctor.agent.fixes.diffs import unified_diff
    from torchdoctor.agent.fixes.models import Patch
    from torchdoctor.agent.fixes.verify import Claim
    from torchdoctor.agent.models import Severity

    script = (
        "import torch\n"
        "import torch.nn as nn\n"
        "\n"
        "\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(2, 1)\n"
        "\n"
        "    def forward(self, x):\n"
        "        return self.fc(x)\n"
        "\n"
        "\n"
        'device = "cuda" if torch.cuda.is_available() else "cpu"\n'
        "model = Net().to(device)\n"
        "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "for step in range(3):\n"
        "    loss = model(torch.randn(4, 2, device=device)).pow(2).mean()\n"
        "    opt.zero_grad()\n"
        "    loss.backward()\n"
        "    opt.step()\n"
    )
    fixed = script.replace(
        "for step", "if torch.cuda.is_available():\n    model.compile()\nfor step"
    )
    runs: list[Any] = []
    patched = SmokeRun(ok=True, step_times_s=FAST, cuda_available=cuda, executed_lines={})

    def smoke_run(*args: Any, **_kwargs: Any) -> SmokeRun:
        runs.append(args)
        return patched

    monkeypatch.setattr(verify, "smoke_run", smoke_run)
    verifier = _verifier(tmp_path, cuda=cuda)
    (tmp_path / "root" / "train.py").write_text(script, encoding="utf-8")
    patch = Patch(
        finding_id="TD-1",
        rule="no-torch-compile",
        diff=unified_diff("train.py", script, fixed),
        files=["train.py"],
    )
    steps = verifier.verify(patch, Claim(frozenset({"no-torch-compile"}), Severity.LOW), spec)
    assert [s.step for s in steps][-2:] == ["smoke-run", "speed-up"]
    assert len(runs) == 1  # the smoke run alone: no run to the end, no timing runs
    return steps[-1].detail


def test_a_cuda_only_fix_without_cuda_stops_after_its_smoke_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shape from makemore on a CPU box: the compile fix's `model.compile()` sits under
    `if torch.cuda.is_available():`, never runs there, and checking that the change ran
    started a run to the script's end (520 s of the audit) before the fix was refused."""
    spec = _spec("no-torch-compile")
    said = _untimed_after_smoke_run(tmp_path, monkeypatch, spec, cuda=False)
    assert said == CUDA_ONLY_WITHOUT_CUDA


def test_a_speed_fix_of_device_advice_on_a_cpu_script_is_not_timed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shape from a 2-D diffusion tutorial: `.item()` every step in a script that never
    touches a device is advice at `info`; its fix was run to the script's end (280 s, the
    run's whole budget) though no timing could judge it."""
    from torchdoctor.agent.fixing import _judged_as
    from torchdoctor.agent.models import Evidence, Finding, Severity
    from torchdoctor.agent.state import FixRecord

    def judged(severity: Severity) -> FixSpec:
        finding = Finding(
            id="TD-1",
            rule="host-sync-in-step",
            checkpoint=6,
            phase=4,
            severity=severity,
            title="t",
            file="train.py",
            line=5,
            end_line=5,
            evidence=[Evidence(source="torchdoctor-static", message="m")],
        )
        record = FixRecord(
            finding_id="TD-1",
            phase=4,
            rule="host-sync-in-step",
            origin="codemod",
            kind=FixKind.PERFORMANCE,
            diff="",
        )
        return _judged_as(finding, record)

    assert judged(Severity.MEDIUM).untimed == ""
    spec = judged(Severity.INFO)
    assert spec.untimed == DEVICE_ADVICE_ON_CPU
    said = _untimed_after_smoke_run(tmp_path, monkeypatch, spec, cuda=True)
    assert said == DEVICE_ADVICE_ON_CPU


def test_runs_that_time_no_steady_step_are_not_repeated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kuangliu/pytorch-cifar at `--steps 5` on a CPU: every step was a warm-up or a memory
    scan, so no run timed one, and six more pairs of runs (108 s) timed none either."""
    started = _timed(monkeypatch)
    root = tmp_path / "root"
    root.mkdir()
    baseline = SmokeRun(ok=True, step_times_s=[], cuda_available=False)
    verifier = Verifier(root, object(), ["python", "main.py"], baseline=baseline)  # type: ignore[arg-type]

    step = verifier._speed(tmp_path, SmokeRun(ok=True), _spec("persistent-workers-off"))

    assert (step.ok, step.detail) == (False, "too few steady-state steps timed: raise --steps")
    assert started == []
