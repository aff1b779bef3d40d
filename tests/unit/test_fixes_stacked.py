"""A fix measured on top of verified fixes is held to the loosest tolerance beneath it."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from pytest import MonkeyPatch

from torchdoctor.agent.fixes import pipeline
from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.stacked import retry_candidates, stacked_spec, verify_on_stack
from torchdoctor.agent.fixes.time_budget import TimeBudget
from torchdoctor.agent.fixes.verify import CUDA_ONLY_WITHOUT_CUDA, FixSpec, Verifier
from torchdoctor.agent.harness import Harness
from torchdoctor.agent.models import Finding, Fix, Severity, Verification


def _finding(rule: str) -> Finding:
    return Finding(
        id=f"TD-{rule[:12]:0<12}",
        rule=rule,
        checkpoint=6,
        phase=4,
        severity=Severity.LOW,
        title=rule,
        file="t.py",
        line=1,
        end_line=1,
        evidence=[],
    )


def test_tolerance_widens_to_the_stack_and_never_narrows() -> None:
    fused = codemod_for("unfused-optimizer")
    amp = codemod_for("no-amp")
    assert fused is not None and amp is not None and fused.rtol is not None
    own = FixSpec.of(fused)
    assert stacked_spec(own, []).rtol == fused.rtol
    assert stacked_spec(own, [_finding("no-amp")]).rtol == max(fused.rtol, amp.rtol or 0)
    loose = FixSpec.of(amp)
    assert stacked_spec(loose, [_finding("unfused-optimizer")]).rtol == amp.rtol


def test_symptom_checked_fixes_keep_no_trajectory_tolerance() -> None:
    codemod = codemod_for("zero-grad-missing")
    assert codemod is not None
    spec = FixSpec.of(codemod)
    assert spec.rtol is None
    assert stacked_spec(spec, [_finding("no-amp")]).rtol is None


def _checked(rule: str, *failed: tuple[str, str]) -> Finding:
    """`rule`'s finding with a fix whose behaviour held and whose `failed` (step, detail)
    checks did not."""
    checks = [Verification(step="behaviour", ok=True, detail="same losses")]
    checks += [Verification(step=step, ok=False, detail=detail) for step, detail in failed]
    return _finding(rule).model_copy(update={"fix": Fix(diff="", verification=checks)})


def test_a_perf_fix_short_only_of_its_speed_up_is_measured_again_on_the_stack() -> None:
    undecided = _checked("persistent-workers-off", ("speed-up", "the interval straddles 1%"))
    not_timed = _checked("pin-memory-off", ("speed-up", CUDA_ONLY_WITHOUT_CUDA))
    broken = _checked("no-amp", ("behaviour", "losses diverge"), ("speed-up", "slower"))
    correctness = _checked("zero-grad-missing", ("speed-up", "slower"))
    candidates = retry_candidates([undecided, not_timed, broken, correctness])
    # a CUDA-only fix on a CPU run would be timed as noise again: not retried
    assert [f.rule for f in candidates] == ["persistent-workers-off"]


def test_a_small_gain_not_measured_again_for_time_says_so(monkeypatch: MonkeyPatch) -> None:
    """The fix stage announced a re-measurement on the verified fixes; one it could not start
    must not read as if its measurement against the original were the last word (the GPT-2
    padded head: -0.4% on the float32 script, +15.3% on the verified stack)."""
    stacked = _finding("no-amp").model_copy(update={"fix": Fix(diff="", verified=True)})
    small = _checked("persistent-workers-off", ("speed-up", "the interval straddles 1%"))
    by_id = {stacked.id: stacked, small.id: small}
    amp = codemod_for("no-amp")
    assert amp is not None
    specs = {stacked.id: FixSpec.of(amp)}
    monkeypatch.setattr(pipeline, "verify_on_stack", lambda *args: {})
    said: list[str] = []
    verifier = Verifier(Path("."), cast(Harness, object()), ["python", "t.py"])
    pipeline._retry_small_gains(verifier, by_id, specs, TimeBudget(None), said.append)
    fix = by_id[small.id].fix
    assert fix is not None and not fix.verified
    assert fix.verification[-1].detail == pipeline.NOT_REMEASURED
    assert said[-1] == f"  persistent-workers-off: {pipeline.NOT_REMEASURED}"
    assert small.id not in specs


def test_candidates_on_a_stack_that_does_not_merge_are_returned_unverified(
    tmp_path: Path,
) -> None:
    (tmp_path / "t.py").write_text("x = 1\n", encoding="utf-8")
    stale = "--- a/t.py\n+++ b/t.py\n@@ -1 +1 @@\n-y = 2\n+y = 3\n"
    stacked = _finding("no-amp").model_copy(update={"fix": Fix(diff=stale, verified=True)})
    small = _checked("persistent-workers-off", ("speed-up", "the interval straddles 1%"))
    verifier = Verifier(tmp_path, None, None)
    updated = verify_on_stack(verifier, [stacked], [small])
    fix = updated[small.id].fix
    assert fix is not None and not fix.verified
    assert fix.verification[-1].detail.startswith("the verified fixes do not merge")
