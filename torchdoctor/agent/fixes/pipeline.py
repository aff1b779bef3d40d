"""The fix stage's entry point: propose a codemod fix per finding, prove each, then prove them
together. Nothing here touches the user's files (see `apply.apply_fixes`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.config import RunBudget
from torchdoctor.agent.fixes.codemods import codemod_for, fix_order
from torchdoctor.agent.fixes.codemods.base import BF16_RTOL, EXACT_RTOL, healthy_run
from torchdoctor.agent.fixes.codemods.no_torch_compile import COMPILE_MODES
from torchdoctor.agent.fixes.combine import combine
from torchdoctor.agent.fixes.compile_ladder import climb, ladder_applies
from torchdoctor.agent.fixes.diffs import unified_diff
from torchdoctor.agent.fixes.formatting import format_changed_lines
from torchdoctor.agent.fixes.models import FixKind, FixTarget, Patch, RunSignals, SmokeRun
from torchdoctor.agent.fixes.stacked import retry_candidates, verify_on_stack
from torchdoctor.agent.fixes.time_budget import TimeBudget
from torchdoctor.agent.fixes.verify import Claim, FixSpec, Verifier
from torchdoctor.agent.gate import fix_gate
from torchdoctor.agent.harness import Harness
from torchdoctor.agent.models import Evidence, Finding, Fix, Status, Verification
from torchdoctor.agent.safefs import GuardedTree
from torchdoctor.sandbox.protocol import Sandbox
from torchdoctor.sandbox.shared_cache import compile_cache


def propose_patch(workspace_root: Path, finding: Finding) -> Patch | None:
    """The codemod's patch for `finding`, or None when no codemod applies safely."""
    codemod = codemod_for(finding.rule)
    if codemod is None or finding.file.endswith(".ipynb"):
        return None  # a notebook is JSON: codemods rewrite Python files only
    try:
        source = GuardedTree(workspace_root).read_text(finding.file)
    except (OSError, UnicodeDecodeError):
        return None
    fixed = codemod.transform(source, FixTarget.from_finding(finding))
    if fixed is None:
        return None
    fixed = format_changed_lines(workspace_root, source, fixed)
    return Patch(
        finding_id=finding.id,
        rule=finding.rule,
        origin="codemod",
        diff=unified_diff(finding.file, source, fixed),
        files=[finding.file],
    )


DEFAULT_RTOL = {
    FixKind.CORRECTNESS: None,
    FixKind.PRECISION: BF16_RTOL,
    FixKind.PERFORMANCE: BF16_RTOL,
    FixKind.REFACTOR: EXACT_RTOL,
}


def verify_patch(
    workspace_root: Path,
    finding: Finding,
    patch: Patch,
    kind: FixKind,
    sandbox: Sandbox | None,
    *,
    run_command: list[str] | None = None,
    steps: int = 20,
    timing_runs: int = 3,
    gpu: bool = False,
    budget: RunBudget | None = None,
    config: EngineConfig | None = None,
) -> Finding:
    """Verify one patch from elsewhere (an LLM's, origin "llm") as a fix of the declared
    kind: the same steps as a codemod's, with the kind's default tolerance and, for a
    correctness fix, the healthy-run symptom check. Returns the finding with `fix` set."""
    with compile_cache() as cache:
        runner = Harness(sandbox, budget, gpu=gpu, cache=cache) if sandbox is not None else None
        verifier = Verifier(
            workspace_root, runner, run_command, steps=steps, timing_runs=timing_runs, config=config
        )
        spec = FixSpec(kind=kind, rtol=DEFAULT_RTOL[kind], symptom=healthy_run)
        checks = verifier.verify(patch, Claim(frozenset({finding.rule}), finding.severity), spec)
    verified = all(c.ok for c in checks)
    fix = Fix(diff=patch.diff, verified=verified, origin=patch.origin, verification=checks)
    status = Status.VERIFIED if verified else finding.status
    return finding.model_copy(update={"fix": fix, "status": status})


def propose_and_verify(
    workspace_root: Path,
    findings: list[Finding],
    sandbox: Sandbox | None,
    *,
    run_command: list[str] | None = None,
    steps: int = 20,
    timing_runs: int = 3,
    max_timing_runs: int = 6,
    gpu: bool = False,
    budget: RunBudget | None = None,
    config: EngineConfig | None = None,
    progress: Callable[[str], None] | None = None,
    compile_modes: tuple[str, ...] = COMPILE_MODES,
    deadline: float | None = None,
    baseline: SmokeRun | None = None,
) -> list[Finding]:
    """Return `findings` with `fix` filled where a codemod applies, each fix verified alone
    (phase order, earlier phases first) and then in combination with the fixes before it.

    Without `run_command` (or a sandbox) verification stops after the static steps and no fix
    is marked verified. On GPU a verified `model.compile()` climbs the compile-mode ladder
    (`compile_ladder`). A fix whose verification fails leaves its finding open, with the
    failing step and its reason in `fix.verification`. `deadline` (a `time.monotonic()` value)
    is when the stage should end: no fix, compile mode or re-measurement is started that the
    verifications so far say would overrun it (`TimeBudget`); the rest stay unverified with the
    reason, and the fixes verified so far are still combined, so a run cut by a time limit (a
    GPU lease) ends with a result rather than nothing. `baseline`: the original's seeded run of
    `run_command` (`Verifier.baseline`) when the caller already made it; otherwise it is made
    here, once.
    """
    say = progress or (lambda _line: None)
    with compile_cache() as cache:  # the verification runs share their compiles
        runner = Harness(sandbox, budget, gpu=gpu, cache=cache) if sandbox is not None else None
        verifier = Verifier(
            workspace_root,
            runner,
            run_command,
            steps=steps,
            timing_runs=timing_runs,
            max_timing_runs=max_timing_runs,
            config=config,
            baseline=baseline,
        )
        by_id = {f.id: f for f in findings}
        specs: dict[str, FixSpec] = {}
        overheads: list[tuple[Finding, Patch]] = []
        measured = _baseline_signals(verifier, findings)
        time_left = TimeBudget(deadline)
        for finding in sorted(findings, key=lambda f: fix_order(f, measured)):
            if not finding.status.is_open:
                continue
            patch = propose_patch(workspace_root, finding)
            codemod = codemod_for(finding.rule)
            if patch is None or codemod is None:
                by_id[finding.id] = with_refusal(workspace_root, finding)
                continue
            if codemod.overhead:
                overheads.append((finding, patch))
                continue
            spec = FixSpec.of(codemod)
            if not time_left.fits(compiles=spec.compiles):
                by_id[finding.id] = _out_of_time(finding, patch.diff)
                say(f"  {finding.rule}: {OUT_OF_TIME}")
                continue
            say(f"verifying {finding.rule} ({spec.kind}) at {finding.file}:{finding.line}")
            if deadline is not None and verifier.runner is not None and verifier.run_command:
                # the baseline is made once, outside the timed verifications: the first one
                # carried it, and its inflated time (96 s against 67 s on an H100) made the
                # budget refuse every fix after it
                verifier.baseline()
            judged = by_id[finding.id] = _verified_alone(verifier, finding, patch, spec, time_left)
            assert judged.fix is not None
            say(f"  {finding.rule}: {verdict_line(judged.fix.verification)}")
            if by_id[finding.id].status is Status.VERIFIED:
                specs[finding.id] = spec
                time_left.keep_for_closing_check(compiles=any(s.compiles for s in specs.values()))
                if gpu and ladder_applies(by_id[finding.id], workspace_root):
                    by_id[finding.id] = climb(
                        verifier,
                        by_id[finding.id],
                        verifier.last_runs,
                        say,
                        compile_modes,
                        time_left,
                    )
        _verify_overheads(verifier, by_id, specs, overheads, time_left, say)
        if time_left.fits():
            _retry_small_gains(verifier, by_id, specs, time_left, say)
        _combine_verified(verifier, by_id, specs, say)
        return [by_id[f.id] for f in findings]


def _baseline_signals(verifier: Verifier, findings: list[Finding]) -> RunSignals | None:
    """The baseline run's signals that order the fixes (`fix_order`), when a fix reads one
    and there is a run to take them from. The run is the one every verification compares
    against, so this costs nothing more."""
    relieving = any(
        (codemod := codemod_for(f.rule)) is not None and codemod.relieves for f in findings
    )
    if not relieving or verifier.runner is None or verifier.run_command is None:
        return None
    baseline = verifier.baseline()
    return baseline.signals if baseline.ok else None


OUT_OF_TIME = "not verified: the fix stage's time budget ran out before it"
NOT_REMEASURED = (
    "not measured again on the verified fixes: the fix stage's time budget ran out before it"
)


def _out_of_time(finding: Finding, diff: str) -> Finding:
    """The finding with its codemod's fix proposed but unverified, saying why."""
    check = Verification(step="time-budget", ok=False, detail=OUT_OF_TIME)
    return finding.model_copy(
        update={"fix": Fix(diff=diff, verified=False, origin="codemod", verification=[check])}
    )


def with_refusal(workspace_root: Path, finding: Finding) -> Finding:
    """The finding with the codemod's reason for not fixing it as evidence, when it has one."""
    codemod = codemod_for(finding.rule)
    path = workspace_root / finding.file
    if codemod is None or not path.is_file():
        return finding
    reason = codemod.explain(
        path.read_text(encoding="utf-8", errors="replace"), FixTarget.from_finding(finding)
    )
    if reason is None:
        return finding
    note = Evidence(
        source="torchdoctor-codemod",
        kind="static",
        message=f"no automatic fix: {reason}",
        file=finding.file,
        line=finding.line,
    )
    return finding.model_copy(update={"evidence": [*finding.evidence, note]})


def _proposed(finding: Finding, diff: str, checks: list[Verification]) -> Finding:
    """The finding with its codemod's fix and the checks made of it so far."""
    fix = Fix(diff=diff, verified=False, origin="codemod", verification=checks)
    return finding.model_copy(update={"fix": fix})


def _verified_alone(
    verifier: Verifier, finding: Finding, patch: Patch, spec: FixSpec, time_left: TimeBudget
) -> Finding:
    """The finding with its fix verified on the verifier's workspace, the time it took
    counted in `time_left`."""
    with time_left.measuring(spec.compiles):
        checks = verifier.verify(patch, Claim(frozenset({finding.rule}), finding.severity), spec)
    return _judged(_proposed(finding, patch.diff, checks))


def _judged(finding: Finding) -> Finding:
    """Verified when every check passed (and there was at least one)."""
    assert finding.fix is not None
    checks = finding.fix.verification
    if not checks or not all(c.ok for c in checks):
        return finding
    return finding.model_copy(
        update={"fix": finding.fix.model_copy(update={"verified": True}), "status": Status.VERIFIED}
    )


def _verify_overheads(
    verifier: Verifier,
    by_id: dict[str, Finding],
    specs: dict[str, FixSpec],
    overheads: list[tuple[Finding, Patch]],
    time_left: TimeBudget,
    say: Callable[[str], None],
) -> None:
    """The overhead fixes (`Codemod.overhead`), after the others: measured on top of the
    verified fixes when there are any and a run to measure on, else against the original."""
    if not overheads:
        return
    gate = fix_gate(list(by_id.values()))
    stack = [by_id[i] for i in specs if i not in gate.blocked]
    updated: dict[str, Finding] = {}
    if stack and verifier.runner is not None:
        say(f"verifying {len(overheads)} overhead fix(es) on top of {len(stack)} verified")
        proposed = [_proposed(finding, patch.diff, []) for finding, patch in overheads]
        updated = verify_on_stack(verifier, stack, proposed, time_left)
    else:
        for finding, patch in overheads:
            codemod = codemod_for(finding.rule)
            if codemod is None or not time_left.fits():
                continue
            say(f"verifying {finding.rule} (overhead) at {finding.file}:{finding.line}")
            spec = FixSpec.of(codemod)
            updated[finding.id] = _verified_alone(verifier, finding, patch, spec, time_left)
    for finding, patch in overheads:
        judged = updated.get(finding.id)
        if judged is None:
            by_id[finding.id] = _out_of_time(finding, patch.diff)
            say(f"  {finding.rule}: {OUT_OF_TIME}")
            continue
        assert judged.fix is not None
        by_id[finding.id] = judged
        say(f"  {finding.rule}: {verdict_line(judged.fix.verification)}")
        codemod = codemod_for(finding.rule)
        if judged.fix.verified and codemod is not None:
            specs[finding.id] = FixSpec.of(codemod)


def _retry_small_gains(
    verifier: Verifier,
    by_id: dict[str, Finding],
    specs: dict[str, FixSpec],
    time_left: TimeBudget,
    say: Callable[[str], None],
) -> None:
    """Measure again, on top of the verified fixes, the performance fixes that lost only on
    the speed-up (see `stacked`)."""
    gate = fix_gate(list(by_id.values()))
    stack = [by_id[i] for i in specs if i not in gate.blocked]
    candidates = [f for f in retry_candidates(list(by_id.values())) if f.id not in gate.blocked]
    if not stack or not candidates or verifier.runner is None:
        return
    say(f"re-measuring {len(candidates)} small performance gain(s) on the verified fixes")
    measured = verify_on_stack(verifier, stack, candidates, time_left)
    for finding_id, finding in measured.items():
        by_id[finding_id] = finding
        codemod = codemod_for(finding.rule)
        if finding.fix is not None and finding.fix.verified and codemod is not None:
            specs[finding_id] = FixSpec.of(codemod)
    for finding in candidates:
        if finding.id not in measured and finding.fix is not None:
            # not started: the report must not read as if the measurement alone were final
            note = Verification(step="on-verified-fixes", ok=False, detail=NOT_REMEASURED)
            fix = finding.fix.model_copy(update={"verification": [*finding.fix.verification, note]})
            by_id[finding.id] = finding.model_copy(update={"fix": fix})
            say(f"  {finding.rule}: {NOT_REMEASURED}")


def _combine_verified(
    verifier: Verifier,
    by_id: dict[str, Finding],
    specs: dict[str, FixSpec],
    say: Callable[[str], None],
) -> None:
    """Re-verify the verified fixes together (only those the correctness gate lets through)."""
    gate = fix_gate(list(by_id.values()))
    candidates = [(by_id[i], s) for i, s in specs.items() if i not in gate.blocked]
    if len(candidates) < 2:
        return
    say(f"verifying {len(candidates)} verified fixes together")
    combination, notes = combine(verifier, candidates)
    for finding_id, note in notes.items():
        finding = by_id[finding_id]
        assert finding.fix is not None
        dropped = finding_id in combination.dropped
        fix = finding.fix.model_copy(
            update={"verification": [*finding.fix.verification, note], "verified": not dropped}
        )
        status = Status.OPEN if dropped else finding.status
        by_id[finding_id] = finding.model_copy(update={"fix": fix, "status": status})


def verdict_line(checks: list[Verification]) -> str:
    """A fix's verdict as one progress line: its measured gain when it verified, else the
    step that failed and why."""
    failed = next((c for c in checks if not c.ok), None)
    if failed is None:
        # a performance fix's gain is what the progress line is read for
        gain = next((c.detail for c in checks if c.step.endswith("speed-up")), None)
        return f"verified ({gain})" if gain else "verified"
    return f"not verified at {failed.step}: {failed.detail}"
