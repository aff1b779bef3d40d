"""A fix measured on top of verified fixes is held to the loosest tolerance beneath it."""

from __future__ import annotations

from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.stacked import stacked_spec
from torchdoctor.agent.fixes.verify import FixSpec
from torchdoctor.agent.models import Finding, Severity


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
