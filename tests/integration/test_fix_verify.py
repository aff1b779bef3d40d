"""The fix pipeline end to end on a tiny CPU script: real static engine, offline reasoner,
local sandbox and probes harness (each smoke run is a real sandboxed subprocess)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
import torch

from tests.fix_findings import findings_of
from torchdoctor.agent.fixes.diffs import unified_diff
from torchdoctor.agent.fixes.models import FixKind, Patch
from torchdoctor.agent.fixes.pipeline import propose_and_verify
from torchdoctor.agent.fixes.verify import CUDA_ONLY_WITHOUT_CUDA, NO_RUN, Claim, FixSpec, Verifier
from torchdoctor.agent.harness import Harness
from torchdoctor.agent.models import Finding, Severity, Status
from torchdoctor.sandbox.config import get_sandbox

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).parents[1] / "fixtures" / "fixes_integration" / "train.py"
RUN = ["python", "train.py"]
STEPS = 20
WANTED = {"zero-grad-missing", "loss-graph-accumulation", "pin-memory-off"}


def audit(root: Path) -> list[Finding]:
    return findings_of(root)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fix-workspace")
    shutil.copy(SCRIPT, root / "train.py")
    return root


@pytest.fixture(scope="module")
def verifier(workspace: Path) -> Verifier:
    """Verifies this module's own patches; its baseline run (made here, once) is also the one
    the pipeline below compares against: the same script, command, seed and steps."""
    made = Verifier(workspace, Harness(get_sandbox("local")), RUN, steps=STEPS, timing_runs=1)
    made.baseline()
    return made


@pytest.fixture(scope="module")
def verified(workspace: Path, verifier: Verifier) -> dict[str, Finding]:
    findings = [f for f in audit(workspace) if f.rule in WANTED]
    assert {f.rule for f in findings} == WANTED
    # pin-memory-off acts only where CUDA is, so this CPU run does not time it (no runs spent)
    out = propose_and_verify(
        workspace,
        findings,
        get_sandbox("local"),
        run_command=RUN,
        steps=STEPS,
        timing_runs=1,
        max_timing_runs=2,
        baseline=verifier.baseline_run,
    )
    return {f.rule: f for f in out}


def steps_of(finding: Finding) -> dict[str, tuple[bool, str]]:
    assert finding.fix is not None
    return {v.step: (v.ok, v.detail) for v in finding.fix.verification}


def test_correctness_fix_is_verified_by_its_symptom(verified: dict[str, Finding]) -> None:
    finding = verified["zero-grad-missing"]
    steps = steps_of(finding)
    assert finding.status is Status.VERIFIED and finding.fix and finding.fix.verified
    assert list(steps)[:6] == [
        "patch-applies",
        "parses",
        "rule-cleared",
        "smoke-run",
        "executed-change",
        "behaviour",
    ]
    assert "last gradient norm" in steps["behaviour"][1]


def test_leak_fix_keeps_the_exact_trajectory_and_stops_the_growth(
    verified: dict[str, Finding],
) -> None:
    steps = steps_of(verified["loss-graph-accumulation"])
    assert steps["behaviour"][0], steps["behaviour"][1]
    assert "loss trajectory" in steps["behaviour"][1]


def test_verified_fixes_are_verified_together(verified: dict[str, Finding]) -> None:
    for rule in ("zero-grad-missing", "loss-graph-accumulation"):
        combined = steps_of(verified[rule])["combined"]
        assert combined[0], combined[1]


def test_a_cuda_only_perf_fix_is_not_timed_on_a_cpu_run(
    verified: dict[str, Finding], workspace: Path
) -> None:
    """pin_memory=torch.cuda.is_available() runs the same code on this CPU as the original: its
    step times would be noise, so it is neither timed, nor retried on the verified fixes, nor
    verified; it stays proposed, saying why. The verdict is known once its smoke run shows no
    CUDA device: nothing after it is run (a check that the change ran could cost a run to the
    script's end)."""
    finding = verified["pin-memory-off"]
    assert finding.fix is not None
    steps = steps_of(finding)
    assert steps["smoke-run"][0]
    assert list(steps)[-1] == "speed-up" and "behaviour" not in steps
    assert steps["speed-up"] == (False, CUDA_ONLY_WITHOUT_CUDA)
    assert "on-verified-fixes" not in steps
    assert not finding.fix.verified and finding.status is not Status.VERIFIED
    assert (workspace / "train.py").read_text() == SCRIPT.read_text()  # user file untouched


def test_static_audit_without_a_run_verifies_nothing(workspace: Path) -> None:
    findings = [f for f in audit(workspace) if f.rule == "zero-grad-missing"]
    (out,) = propose_and_verify(workspace, findings, None, run_command=None)
    assert out.fix is not None and not out.fix.verified and out.status is Status.OPEN
    assert out.fix.verification[-1].step == "smoke-run"
    assert out.fix.verification[-1].detail == NO_RUN


def _patch(workspace: Path, old: str, new: str) -> Patch:
    source = (workspace / "train.py").read_text()
    assert old in source
    diff = unified_diff("train.py", source, source.replace(old, new))
    return Patch(finding_id="TD-test", rule="zero-grad-missing", diff=diff, files=["train.py"])


CLAIM = Claim(rules=frozenset({"zero-grad-missing"}), severity=Severity.HIGH)


def test_a_fix_that_breaks_the_script_is_rejected(verifier: Verifier, workspace: Path) -> None:
    patch = _patch(
        workspace,
        "        loss.backward()\n",
        "        optimizer.zero_grad()\n        loss.backwards()\n",
    )
    spec = FixSpec(kind=FixKind.CORRECTNESS, rtol=None, symptom=lambda b, a: (True, ""))
    steps = {v.step: v for v in verifier.verify(patch, CLAIM, spec)}
    assert steps["rule-cleared"].ok
    assert not steps["smoke-run"].ok and "AttributeError" in steps["smoke-run"].detail
    assert "behaviour" not in steps


def test_a_change_beyond_tolerance_is_rejected(verifier: Verifier, workspace: Path) -> None:
    patch = _patch(
        workspace,
        "        loss.backward()\n",
        "        optimizer.zero_grad()\n        (loss * 10).backward()\n",
    )
    spec = FixSpec(kind=FixKind.REFACTOR, rtol=1e-5, symptom=lambda b, a: (True, ""))
    steps = {v.step: v for v in verifier.verify(patch, CLAIM, spec)}
    assert steps["smoke-run"].ok
    assert not steps["behaviour"].ok and "largest relative deviation" in steps["behaviour"].detail


def test_a_patch_that_does_not_apply_stops_verification(verifier: Verifier) -> None:
    diff = unified_diff("train.py", "not the file\n", "something else\n")
    patch = Patch(finding_id="TD-x", rule="zero-grad-missing", diff=diff, files=["train.py"])
    spec = FixSpec(kind=FixKind.CORRECTNESS, rtol=None, symptom=lambda b, a: (True, ""))
    (only,) = verifier.verify(patch, CLAIM, spec)
    assert only.step == "patch-applies" and not only.ok


def test_a_perf_fix_without_a_measurable_gain_is_not_verified(
    verifier: Verifier, workspace: Path
) -> None:
    source = (workspace / "train.py").read_text()
    fixed = source.replace("import torch\n", "import time\n\nimport torch\n", 1).replace(
        "        loss.backward()\n",
        "        optimizer.zero_grad()\n        loss.backward()\n        time.sleep(0.05)\n",
    )
    patch = Patch(
        finding_id="TD-slow",
        rule="zero-grad-missing",
        diff=unified_diff("train.py", source, fixed),
        files=["train.py"],
    )
    spec = FixSpec(kind=FixKind.PERFORMANCE, rtol=None, symptom=lambda b, a: (True, ""))
    steps = {v.step: v for v in verifier.verify(patch, CLAIM, spec)}
    assert steps["smoke-run"].ok and steps["behaviour"].ok
    assert not steps["speed-up"].ok and "95% CI" in steps["speed-up"].detail


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpt2_attention_and_bf16_fixes_are_verified_on_the_gpu(tmp_path: Path) -> None:
    bench_path = Path(__file__).parents[2] / "benchmarks" / "gpt2_fix_bench.py"
    spec = importlib.util.spec_from_file_location("gpt2_fix_bench", bench_path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    shutil.copy(bench.NAIVE, tmp_path / "train.py")
    wanted = {"manual-attention", "no-amp"}
    findings = [f for f in bench.audit(tmp_path) if f.rule in wanted]
    out = propose_and_verify(
        tmp_path,
        findings,
        get_sandbox(),
        run_command=["python", "train.py", "--batch-size", "4", "--steps", "20"],
        steps=14,
        timing_runs=1,
        gpu=True,
        budget=bench.GPU_BUDGET,
    )
    for finding in out:
        assert finding.fix is not None
        assert finding.fix.verified, [v.model_dump() for v in finding.fix.verification]
