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
from torchdoctor.agent.fixes.verify import CUDA_ONLY_WITHOUT_CUDA, FixSpec, Verifier

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


@pytest.mark.parametrize("rule", ["no-amp", "unfused-optimizer", "pin-memory-off"])
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
