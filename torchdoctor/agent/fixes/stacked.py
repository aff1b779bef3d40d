"""A performance fix too small to beat the noise on the original script gets a second
measurement on top of the already verified fixes.

Against a slow float32 baseline, a fused optimizer or one less sync per step is a few percent
of the step; once bf16, SDPA and compilation have cut the step several-fold, the same saving
is a much larger share, and that is the setting it will actually run in. The fix is still
checked in full (applies, parses, rule cleared, smoke run, tolerance, speed-up), only against
the stacked workspace; its diff stays the one against the user's file.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.combine import merge_fixes, retarget
from torchdoctor.agent.fixes.diffs import PatchError, read_exact, unified_diff
from torchdoctor.agent.fixes.models import FixKind, FixTarget, Patch
from torchdoctor.agent.fixes.time_budget import TimeBudget
from torchdoctor.agent.fixes.verify import CUDA_ONLY_WITHOUT_CUDA, Claim, FixSpec, Verifier
from torchdoctor.agent.fixes.workcopy import workspace_copy
from torchdoctor.agent.models import Finding, Status, Verification


def retry_candidates(findings: list[Finding]) -> list[Finding]:
    """Performance fixes whose only failed check is the speed-up."""
    out = []
    for finding in findings:
        codemod = codemod_for(finding.rule)
        fix = finding.fix
        if (
            fix is None
            or fix.verified
            or codemod is None
            or codemod.kind is not FixKind.PERFORMANCE
        ):
            continue
        failed = [v for v in fix.verification if not v.ok]
        if [v.step for v in failed] == ["speed-up"] and failed[0].detail != CUDA_ONLY_WITHOUT_CUDA:
            out.append(finding)
    return out


def verify_on_stack(
    base: Verifier,
    stack: list[Finding],
    candidates: list[Finding],
    time_left: TimeBudget | None = None,
) -> dict[str, Finding]:
    """Re-verify `candidates` on a copy of the workspace with `stack` applied; returns the
    updated findings (verified or not, with the stacked checks appended; when the stack does
    not merge, each candidate unverified, saying so). A candidate that `time_left` says would
    not end in time is not started, and not returned."""
    time_left = time_left or TimeBudget(None)
    updated: dict[str, Finding] = {}
    try:
        texts = merge_fixes(base.root, stack)
    except PatchError as exc:
        note = Verification(
            step="on-verified-fixes", ok=False, detail=f"the verified fixes do not merge: {exc}"
        )
        for finding in candidates:
            if finding.fix is not None:
                fix = finding.fix.model_copy(
                    update={"verified": False, "verification": [*finding.fix.verification, note]}
                )
                updated[finding.id] = finding.model_copy(update={"fix": fix})
        return updated
    rules = ", ".join(f.rule for f in stack)
    with workspace_copy(base.root) as stacked:
        for path, text in texts.items():
            (stacked / path).write_text(text, encoding="utf-8")
        verifier = Verifier(
            stacked,
            base.runner,
            base.run_command,
            steps=base.steps,
            timing_runs=base.timing_runs,
            max_timing_runs=base.max_timing_runs,
            config=base.config,
            paths=base.paths,
        )
        for finding in candidates:
            patch = _patch_on(base.root, stacked, finding)
            codemod = codemod_for(finding.rule)
            assert finding.fix is not None and codemod is not None
            if not time_left.fits(compiles=stacked_spec(FixSpec.of(codemod), stack).compiles):
                continue
            if patch is None:
                note = Verification(
                    step="on-verified-fixes", ok=False, detail="the fix does not apply on them"
                )
                checks = [note]
            else:
                claim = Claim(frozenset({finding.rule}), finding.severity)
                spec = stacked_spec(FixSpec.of(codemod), stack)
                with time_left.measuring(spec.compiles):
                    checks = [
                        v.model_copy(update={"step": f"on-verified-fixes:{v.step}"})
                        for v in verifier.verify(patch, claim, spec)
                    ]
                checks.insert(
                    0,
                    Verification(
                        step="on-verified-fixes", ok=True, detail=f"measured on top of: {rules}"
                    ),
                )
            verified = all(c.ok for c in checks)
            fix = finding.fix.model_copy(
                update={
                    "verified": verified,
                    "verification": [*finding.fix.verification, *checks],
                }
            )
            status = Status.VERIFIED if verified else finding.status
            updated[finding.id] = finding.model_copy(update={"fix": fix, "status": status})
    return updated


def stacked_spec(spec: FixSpec, stack: list[Finding]) -> FixSpec:
    """On top of a bf16 (or compiled) stack, two seeded runs agree only to the stack's
    tolerance: any change of summation order is amplified by the reduced precision. A fix
    measured there is held to the loosest tolerance of the fixes beneath it, never tighter,
    and runs with the host memory the stack's compiler needs."""
    codemods = [c for f in stack if (c := codemod_for(f.rule)) is not None]
    memory = max([spec.extra_memory_mb, *(c.extra_host_memory_mb for c in codemods)])
    if spec.rtol is None:
        return replace(spec, extra_memory_mb=memory)
    beneath = [c.rtol for c in codemods if c.rtol]
    return replace(spec, rtol=max([spec.rtol, *beneath]), extra_memory_mb=memory)


def _patch_on(original_root: Path, stacked: Path, finding: Finding) -> Patch | None:
    codemod = codemod_for(finding.rule)
    if codemod is None:
        return None
    original = read_exact(original_root / finding.file)
    current = read_exact(stacked / finding.file)
    target = retarget(original, current, FixTarget.from_finding(finding))
    if target is None:
        return None
    fixed = codemod.transform(current, target)
    if fixed is None:
        return None
    return Patch(
        finding_id=finding.id,
        rule=finding.rule,
        diff=unified_diff(finding.file, current, fixed),
        files=[finding.file],
    )
