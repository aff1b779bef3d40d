"""A phase's fixes on the audit's working copy: propose them, verify them one at a time, adopt
the verified ones the gate lets through.

The working copy is the audited files with the adopted fixes of earlier phases in them (only
the changed files' texts are kept, in the audit's state). A fix is verified on it, so a
performance fix is measured on corrected code; its diff stays the one against the user's file,
which is what the report shows and `apply` writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.checks.device_scope import DEVICE_BOUND_RULES
from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.codemods.base import healthy_run
from torchdoctor.agent.fixes.combine import combine, merge_fixes, replay_codemod, retarget
from torchdoctor.agent.fixes.compile_ladder import RULE as LADDER_RULE
from torchdoctor.agent.fixes.compile_ladder import climb
from torchdoctor.agent.fixes.diffs import (
    PatchError,
    apply_to_text,
    parse,
    read_exact,
    renumber_refs,
    unified_diff,
)
from torchdoctor.agent.fixes.formatting import format_changed_lines
from torchdoctor.agent.fixes.models import FixKind, FixTarget, Patch, SmokeRun
from torchdoctor.agent.fixes.pipeline import DEFAULT_RTOL, propose_patch, with_refusal
from torchdoctor.agent.fixes.time_budget import TimeBudget
from torchdoctor.agent.fixes.verify import (
    DEVICE_ADVICE_ON_CPU,
    NO_RUN,
    NOT_REACHED,
    Claim,
    FixSpec,
    Verifier,
    run_key,
)
from torchdoctor.agent.fixes.workcopy import workspace_copy
from torchdoctor.agent.harness import Harness
from torchdoctor.agent.models import Evidence, Finding, Fix, Severity, Status, Verification
from torchdoctor.agent.safefs import GuardedTree
from torchdoctor.agent.state import FixRecord


@contextmanager
def materialized(root: Path, working_copy: dict[str, str]) -> Iterator[Path]:
    """A private copy of `root` with the working copy's texts written in."""
    with workspace_copy(root) as copy:
        for path, text in working_copy.items():
            (copy / path).write_text(text, encoding="utf-8")
        yield copy


def propose(root: Path, findings: list[Finding], phase: int) -> list[FixRecord]:
    """A fix for each open finding of `phase` that has one: the reasoner's (LLM) patch, else
    the rule's codemod. Nothing is verified yet."""
    records: list[FixRecord] = []
    mine = [f for f in findings if f.phase == phase and f.status.is_open]
    # within a severity, in the order a run meets them: a crash fix the original run never
    # reaches is verified after the one that gets it there (`graph`'s `past_crashes_only`)
    order = sorted(
        mine, key=lambda f: (is_overhead(f.rule), -f.severity.rank, f.file, f.line, f.id)
    )
    for finding in order:
        if finding.fix is not None and finding.fix.origin == "llm" and finding.fix.diff:
            records.append(llm_record(finding, finding.fix.diff))
            continue
        codemod = codemod_for(finding.rule)
        patch = propose_patch(root, finding) if codemod is not None else None
        if codemod is not None and patch is not None:
            records.append(
                FixRecord(
                    finding_id=finding.id,
                    phase=phase,
                    rule=finding.rule,
                    origin="codemod",
                    kind=codemod.kind,
                    diff=patch.diff,
                )
            )
    return records


def explained_refusals(
    root: Path, findings: list[Finding], phase: int, records: list[FixRecord]
) -> list[Finding]:
    """The open findings of `phase` whose rule has a codemod that declined them, each with the
    codemod's reason as evidence (`pipeline.with_refusal`): the report said nothing of why a
    fixable rule got no fix (six hand-written attentions of an educational transformer)."""
    proposed = {r.finding_id for r in records}
    declined = [
        f
        for f in findings
        if f.phase == phase
        and f.status.is_open
        and f.id not in proposed
        and codemod_for(f.rule) is not None
    ]
    explained = ((f, with_refusal(root, f)) for f in declined)
    return [after for before, after in explained if after is not before]


def is_overhead(rule: str) -> bool:
    """Whether the rule's codemod removes per-step host time (`Codemod.overhead`): proposed
    last in its phase, and verified on top of the phase's verified fixes (`stacked_copy`)."""
    codemod = codemod_for(rule)
    return codemod is not None and codemod.overhead


def stacked_copy(
    root: Path, adopted: list[Finding], verified: list[Finding]
) -> tuple[dict[str, str], list[str]] | None:
    """The working copy with this phase's `verified` fixes merged after the `adopted` ones,
    and their rules: what an overhead fix is measured on. None when there are none, or they
    do not merge (the adoption will say why)."""
    if not verified:
        return None
    try:
        texts = merge_fixes(root, [*adopted, *verified])
    except PatchError:
        return None
    return texts, [f.rule for f in verified]


def spec_of(record: FixRecord) -> FixSpec:
    codemod = codemod_for(record.rule) if record.origin == "codemod" else None
    if codemod is not None:
        return FixSpec.of(codemod)
    return FixSpec(kind=record.kind, rtol=DEFAULT_RTOL[record.kind], symptom=healthy_run)


def _judged_as(finding: Finding, record: FixRecord) -> FixSpec:
    """How the fix is verified: a speed fix of device-bound advice the static pass stood
    down to info (a script that never touches a device: `device_scope`) has no cost to
    measure, so it is not timed (diffusion tutorial's `.item()` per step on a CPU script: a
    run to the script's end for a fix that could not be judged)."""
    spec = spec_of(record)
    stood_down = finding.severity is Severity.INFO and finding.rule in DEVICE_BOUND_RULES
    if spec.kind is FixKind.PERFORMANCE and stood_down:
        return replace(spec, untimed=DEVICE_ADVICE_ON_CPU)
    return spec


def patch_on_copy(
    root: Path, working_copy: dict[str, str], finding: Finding, record: FixRecord
) -> Patch:
    """The record's fix as a patch against the working copy (raises PatchError)."""
    patches = parse(record.diff)
    files = [p.path for p in patches]
    if not any(path in working_copy for path in files):
        return Patch(
            finding_id=record.finding_id,
            rule=record.rule,
            origin=record.origin,
            diff=record.diff,
            files=files,
        )
    codemod = codemod_for(record.rule) if record.origin == "codemod" else None
    diff = ""
    for patch in patches:
        original = read_exact(root / patch.path)
        current = working_copy.get(patch.path, original)
        if codemod is not None and files == [finding.file]:
            fixed = replay_codemod(root, codemod, finding, original, working_copy)
        else:
            fixed = apply_to_text(current, patch, offsets=True)
        diff += unified_diff(patch.path, current, fixed)
    return Patch(
        finding_id=record.finding_id, rule=record.rule, origin=record.origin, diff=diff, files=files
    )


@dataclass(frozen=True)
class FixBench:
    """What every verification of one audit runs with."""

    root: Path
    runner: Harness | None
    run_command: list[str] | None
    steps: int
    config: EngineConfig
    paths: list[str]
    reach: Verification | None = None
    """Which run verifies the fix and through which imports it reaches the patched file (or
    that no planned run does: then the fix is not verified)."""
    known_runs: Mapping[str, SmokeRun] = field(default_factory=dict)
    """The audit's patched runs so far (`verify.run_key` -> run): a patched run of the same
    code and call reuses one rather than running again."""
    trace: list[str] = field(default_factory=list)
    """The files the audit's fixes change: the baseline run records their executed lines."""

    def known_baseline(self, working_copy: Mapping[str, str]) -> SmokeRun | None:
        """The working copy's baseline when the audit already ran that code as a fix's or a
        combination's patched run (same files, command, steps and traced files, no memory on
        top): the next phase verifies on it instead of running the same code again."""
        if not working_copy or self.run_command is None:
            return None
        return self.known_runs.get(
            run_key(working_copy, self.run_command, self.steps, self.trace, 0)
        )

    def verifier(
        self,
        root: Path,
        baseline: SmokeRun | None,
        working_copy: dict[str, str] | None = None,
        deadline: float | None = None,
    ) -> Verifier:
        return Verifier(
            root,
            self.runner,
            self.run_command,
            steps=self.steps,
            config=self.config,
            paths=self.paths,
            baseline=baseline,
            copy_texts=working_copy,
            known_runs=self.known_runs,
            no_run=NOT_REACHED if self.reach is not None and not self.reach.ok else NO_RUN,
            trace=self.trace,
            deadline=deadline,
        )


@dataclass(frozen=True)
class Verified:
    record: FixRecord
    finding: Finding
    baseline: SmokeRun | None
    """The working copy's baseline run, when this verification made or reused one."""
    runs: dict[str, SmokeRun] = field(default_factory=dict)
    """The fix's patched run by `run_key`, when it is verified (a combined check of the same
    code reuses it)."""


def verify_record(
    bench: FixBench,
    working_copy: dict[str, str],
    baseline: SmokeRun | None,
    finding: Finding,
    record: FixRecord,
    on_top_of: list[str] | None = None,
    deadline: float | None = None,
) -> Verified:
    """Verify one proposed fix on the working copy; the finding gets the fix and its steps,
    the record its wall time (what the fix-time budget counts). `on_top_of`: the rules of
    this phase's verified fixes the working copy holds too (`stacked_copy`); `deadline`
    (`time.monotonic()`): the end of the fix time, which timing runs do not start past."""
    started = time.monotonic()
    checks: list[Verification] = [bench.reach] if bench.reach is not None else []
    if on_top_of:
        checks.append(
            Verification(
                step="on-verified-fixes",
                ok=True,
                detail=f"measured on top of: {', '.join(on_top_of)}",
            )
        )
    elif working_copy:
        changed = ", ".join(sorted(working_copy))
        checks.append(
            Verification(
                step="on-working-copy",
                ok=True,
                detail=f"verified on the code with the earlier phases' fixes ({changed})",
            )
        )
    try:
        patch = patch_on_copy(bench.root, working_copy, finding, record)
    except PatchError as err:
        checks.append(Verification(step="patch-applies", ok=False, detail=str(err)))
        patch = None
    evidence = finding.evidence
    runs: dict[str, SmokeRun] = {}
    if patch is not None:
        with materialized(bench.root, working_copy) as copy:
            baseline = baseline or bench.known_baseline(working_copy)
            verifier = bench.verifier(copy, baseline, working_copy, deadline)
            claim = Claim(frozenset({finding.rule}), finding.severity)
            checks += _on_user_files(
                bench.root, working_copy, verifier.verify(patch, claim, _judged_as(finding, record))
            )
            baseline = verifier.baseline_run
            runs = verifier.patched_runs
            if all(c.ok for c in checks) and climbs(bench, finding, record):
                checks, evidence, record = with_ladder(
                    bench, verifier, working_copy, finding, record, patch, checks
                )
    finding = finding.model_copy(update={"evidence": evidence})
    verified = all(c.ok for c in checks)
    fix = Fix(diff=record.diff, verified=verified, origin=record.origin, verification=checks)
    status = Status.VERIFIED if verified else finding.status
    return Verified(
        record=record.model_copy(
            update={
                "state": "verified" if verified else "failed",
                "verification": checks,
                "seconds": time.monotonic() - started,
            }
        ),
        finding=finding.model_copy(update={"fix": fix, "status": status}),
        baseline=baseline,
        runs=runs if verified else {},
    )


def fix_time_left(records: Iterable[FixRecord], limit: float) -> float:
    """The seconds of fix time the verifications recorded so far leave."""
    return limit - sum(r.seconds for r in records if r.seconds is not None)


def past_fix_time(records: Iterable[FixRecord], record: FixRecord, limit: float) -> str | None:
    """Why `record`'s verification is not started (it would end past the audit's fix time,
    judged by the verifications the audit made so far), or None when it fits."""
    spent = [(r.seconds, spec_of(r).compiles) for r in records if r.seconds is not None]
    compiles = spec_of(record).compiles
    if TimeBudget.of_spent(limit, spent).fits(compiles=compiles):
        return None
    used = sum(seconds for seconds, _ in spent)
    return (
        f"not started: the fixes' verifications took {used:.0f} s of the {limit:.0f} s "
        f"allowed (--fix-time), and one more would end past it; raise --fix-time to verify it"
    )


def not_started(finding: Finding, record: FixRecord, reason: str) -> Verified:
    """The fix left proposed and unverified, with the reason no verification ran."""
    checks = [Verification(step="fix-time", ok=False, detail=reason)]
    fix = Fix(diff=record.diff, verified=False, origin=record.origin, verification=checks)
    return Verified(
        record=record.model_copy(update={"state": "failed", "verification": checks}),
        finding=finding.model_copy(update={"fix": fix}),
        baseline=None,
    )


def _on_user_files(
    root: Path, working_copy: dict[str, str], checks: list[Verification]
) -> list[Verification]:
    """Checks made on the working copy, their `path:line`s numbered as in the user's files
    (which the finding and its diff are): a line an earlier phase's fix moved is not named by
    its place in the copy."""
    if not working_copy:
        return checks
    files = {
        path: (text, (root / path).read_text(encoding="utf-8", errors="replace"))
        for path, text in working_copy.items()
        if (root / path).is_file()
    }
    return [c.model_copy(update={"detail": renumber_refs(c.detail, files)}) for c in checks]


KEPT_DEFAULT = Verification(
    step="compile-ladder",
    ok=True,
    detail="the mode chosen on the working copy does not apply to the file: the default kept",
)


def climbs(bench: FixBench, finding: Finding, record: FixRecord) -> bool:
    """A verified default-mode compile (the codemod's) on a GPU climbs torch.compile's modes."""
    return (
        record.origin == "codemod"
        and finding.rule == LADDER_RULE
        and bench.runner is not None
        and bench.runner.gpu
    )


def with_ladder(
    bench: FixBench,
    verifier: Verifier,
    working_copy: dict[str, str],
    finding: Finding,
    record: FixRecord,
    patch: Patch,
    checks: list[Verification],
) -> tuple[list[Verification], list[Evidence], FixRecord]:
    """The compile-mode ladder (`compile_ladder.climb`) on the working copy, the finding's
    lines mapped through the earlier phases' edits: its steps, and when it chose a costlier
    mode, the evidence naming it and the record's diff against the user's file in that mode."""
    tree = GuardedTree(bench.root)
    original = tree.read_text(finding.file)
    current = working_copy.get(finding.file, original)
    target = retarget(original, current, FixTarget.from_finding(finding))
    if target is None:
        return checks, finding.evidence, record
    on_copy = finding.model_copy(
        update={
            "line": target.line,
            "end_line": target.end_line,
            "fix": Fix(diff=patch.diff, verified=True, origin="codemod", verification=checks),
        }
    )
    climbed = climb(verifier, on_copy, verifier.last_runs)
    assert climbed.fix is not None
    steps = climbed.fix.verification
    chosen = climbed.model_copy(update={"line": finding.line, "end_line": finding.end_line})
    if "compile_mode" not in FixTarget.from_finding(chosen).data:
        return steps, finding.evidence, record  # the default stays: its diff is the record's
    codemod = codemod_for(finding.rule)
    assert codemod is not None
    fixed = codemod.transform(original, FixTarget.from_finding(chosen))
    if fixed is None:
        return [*steps, KEPT_DEFAULT], finding.evidence, record
    diff = unified_diff(finding.file, original, format_changed_lines(bench.root, original, fixed))
    return steps, chosen.evidence, record.model_copy(update={"diff": diff})


def llm_record(finding: Finding, diff: str) -> FixRecord:
    """A model's patch for `finding`, as a fix waiting for verification."""
    return FixRecord(
        finding_id=finding.id,
        phase=finding.phase,
        rule=finding.rule,
        origin="llm",
        kind=FixKind.for_point(finding.checkpoint),
        diff=diff,
    )


def verify_hook(
    bench: FixBench, working_copy: dict[str, str] | None = None
) -> Callable[[Finding, Fix], Fix]:
    """The tool loop's verifier (`ToolHooks.verify_fix`): a model's patch through the same
    verification as every fix of the audit, on its working copy."""
    copy = working_copy or {}

    def verify(finding: Finding, fix: Fix) -> Fix:
        done = verify_record(bench, copy, None, finding, llm_record(finding, fix.diff))
        assert done.finding.fix is not None
        return done.finding.fix

    return verify


@dataclass(frozen=True)
class Adoption:
    working_copy: dict[str, str]
    kept: list[str]
    dropped: dict[str, Verification]
    """finding id -> why it stays out of the working copy."""
    combined: dict[str, Verification]
    baseline: SmokeRun | None
    runs: dict[str, SmokeRun] = field(default_factory=dict)
    """The combinations' patched runs by `run_key` (a later combined check may reuse them)."""


def adopt(
    bench: FixBench,
    adopted: list[Finding],
    new: list[Finding],
    records: dict[str, FixRecord],
    baseline: SmokeRun | None,
) -> Adoption:
    """Merge the new verified fixes into the working copy after the adopted ones (phase
    order); a fix that conflicts stays out; with a run, the combination is verified again and
    the latest fix is dropped while it regresses."""
    kept: list[Finding] = list(adopted)
    dropped: dict[str, Verification] = {}
    for finding in new:
        try:
            merge_fixes(bench.root, [*kept, finding])
        except PatchError as err:
            dropped[finding.id] = Verification(
                step="combined", ok=False, detail=f"conflicts with the fixes before it: {err}"
            )
            continue
        kept.append(finding)
    combined: dict[str, Verification] = {}
    runs: dict[str, SmokeRun] = {}
    added = [f for f in kept if f not in adopted]
    if bench.runner is not None and bench.run_command is not None and added and len(kept) > 1:
        verifier = bench.verifier(bench.root, baseline)
        with_specs = [(f, spec_of(records[f.id])) for f in kept]
        combination, notes = combine(verifier, with_specs)
        baseline = verifier.baseline_run
        runs = verifier.patched_runs
        for finding_id, note in notes.items():
            if finding_id in combination.dropped:
                dropped[finding_id] = note
            else:
                combined[finding_id] = note
        kept = [f for f in kept if f.id in combination.kept]
    texts = merge_fixes(bench.root, kept) if kept else {}
    return Adoption(
        working_copy=texts,
        kept=[f.id for f in kept],
        dropped=dropped,
        combined=combined,
        baseline=baseline,
        runs=runs,
    )


RUN_FAILURES = frozenset({"probe-script-error", "probe-hang"})
"""Probe findings that say the original run failed: resolved once a verified fix's run of
the working copy completes."""


def resolved_run_failures(
    findings: list[Finding], kept: list[Finding], baseline: SmokeRun | None
) -> list[Finding]:
    """The open run-failure findings that the working copy's verified fixes resolve: the
    original's seeded run failed, and the same run of a kept fix's patched copy (the fixes
    adopted before it included) completed. Marked fixed, naming those fixes."""
    if baseline is None or baseline.ok:
        return []
    completing = [
        f.id
        for f in kept
        if f.fix is not None
        and f.fix.verified
        and any(v.step == "smoke-run" and v.ok for v in f.fix.verification)
    ]
    if not completing:
        return []
    said = Evidence(
        source="torchdoctor-fix",
        kind="probe",
        message=(
            f"the same instrumented run completes with the verified fix(es) "
            f"{', '.join(completing)} applied (the original's failed: {baseline.detail})"
        ),
    )
    return [
        f.model_copy(update={"status": Status.FIXED, "evidence": [*f.evidence, said]})
        for f in findings
        if f.rule in RUN_FAILURES and f.status.is_open
    ]
