"""Proving a fix: each step recorded as a `Verification`, in the order the design fixes.

1. the patch applies to a private copy of the workspace;
2. every touched file parses;
3. the rule no longer fires there and no new finding of equal or higher severity appears;
4. the probes smoke run (N seeded steps, in the sandbox) succeeds and executes the patched
   lines (a run that never reaches them proves nothing);
5. behaviour is preserved as the fix's kind requires: the seeded loss trajectory within the
   fix's tolerance (exact for refactors, bf16-level for precision changes), or, for
   correctness fixes, the symptom gone;
6. a performance fix is faster by more than run-to-run noise.
Only a fix that passes every step is verified.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from torchdoctor.agent.checks.base import EngineConfig, RawFinding
from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.evidence.loss_spikes import describe, loss_spikes
from torchdoctor.agent.evidence.run_gaps import is_outside, needs_cuda, project_modules
from torchdoctor.agent.fixes.codemods.base import Codemod
from torchdoctor.agent.fixes.diffs import (
    PatchError,
    apply_patch,
    changed_lines,
    map_line,
    renumber_refs,
)
from torchdoctor.agent.fixes.models import FixKind, Patch, RunSignals, SmokeRun
from torchdoctor.agent.fixes.reached import passed_by, unreached
from torchdoctor.agent.fixes.smoke import smoke_run
from torchdoctor.agent.fixes.stats import (
    MIN_IMPROVEMENT,
    SpeedUp,
    Verdict,
    speed_up,
    trajectories_agree,
    trajectories_match,
)
from torchdoctor.agent.fixes.workcopy import SKIPPED, workspace_copy
from torchdoctor.agent.harness import HARNESS_MARGIN_S, Harness
from torchdoctor.agent.models import Severity, Verification
from torchdoctor.sandbox.workspace import WorkspaceError

MAX_ANALYSED_FILES = 2000
NO_RUN = "no smoke run: pass --run"
NOT_REACHED = (
    "no smoke run: no planned run executes the changed file; pass a --run whose script imports it"
)
CRASH_MOVED_ON = "crash-moved-on"
RUN_REPAIRED = "the original run failed "
"""How the behaviour step of a fix whose run completes, where the original's failed, begins."""
CUDA_ONLY_WITHOUT_CUDA = (
    "not timed: the change takes effect only where CUDA is available and the run had no "
    "CUDA device, so the step times of both versions run the same code (any difference is "
    "noise); audit on a GPU to time it"
)
DEVICE_ADVICE_ON_CPU = (
    "not timed: the finding is advice for a device (info) and this script never touches one, "
    "so what the change saves costs nothing here; audit the script on a GPU to time it"
)
FINISH_STEPS = 1_000_000
"""Harness steps of a run left to finish: more than any run command asks for, so the script
ends by itself (the run's time budget still bounds it)."""
UNSEEDED = ":unseeded"
"""Appended to a `run_key`: the unseeded pair of runs of that code and call."""
OTHER_HASH_SEED = 1
"""That run's PYTHONHASHSEED; every other run has 0 (`HarnessCall.hash_seed`)."""
Symptom = Callable[[SmokeRun, SmokeRun], tuple[bool, str]]
_WS = re.compile(r"\s+")


@dataclass(frozen=True)
class FixSpec:
    """How a fix is judged: its kind, trajectory tolerance, symptom check, repeat mode."""

    kind: FixKind
    rtol: float | None
    symptom: Symptom
    unseeded_repeat: bool = False
    hash_seed_repeat: bool = False
    extra_memory_mb: int = 0
    cuda_only: bool = False
    per_epoch: bool = False
    untimed: str = ""
    """Why the fix is not timed whatever its runs show (then it stops after its smoke run)."""

    @classmethod
    def of(cls, codemod: Codemod) -> FixSpec:
        return cls(
            kind=codemod.kind,
            rtol=codemod.rtol,
            symptom=codemod.symptom_gone,
            unseeded_repeat=codemod.reproducibility,
            hash_seed_repeat=codemod.hash_order,
            extra_memory_mb=codemod.extra_host_memory_mb,
            cuda_only=codemod.cuda_only,
            per_epoch=codemod.per_epoch,
        )

    @property
    def compiles(self) -> bool:
        """Whether its runs compile (the compiler's workers are the extra host memory): each
        costs several eager runs (`TimeBudget`)."""
        return self.extra_memory_mb > 0


@dataclass(frozen=True)
class Claim:
    """What a patch claims to fix: a rule at a severity in some files."""

    rules: frozenset[str]
    severity: Severity


class Verifier:
    """Verifies patches against one workspace; the baseline run is made once and reused."""

    def __init__(
        self,
        root: Path,
        runner: Harness | None,
        run_command: list[str] | None,
        *,
        steps: int = 20,
        timing_runs: int = 3,
        max_timing_runs: int = 6,
        config: EngineConfig | None = None,
        paths: list[str] | None = None,
        baseline: SmokeRun | None = None,
        copy_texts: Mapping[str, str] | None = None,
        known_runs: Mapping[str, SmokeRun] | None = None,
        no_run: str = NO_RUN,
        trace: Sequence[str] = (),
        deadline: float | None = None,
    ) -> None:
        """`paths`: the audited files (relative), as the audit's workspace lists them; the
        static check reads only those (None: every Python file under `root`). `baseline`: the
        seeded run of `root` when it is already known. `copy_texts`: what `root` has written
        over the audit's files (path -> text: the working copy), and `known_runs`: the audit's
        patched runs so far, by `run_key`, which a patched run of the same key reuses;
        `no_run`: what the smoke-run step says without a run command (why there is none);
        `trace`: files whose lines the baseline run records (those the audit's fixes change),
        so a fix in code the original went past is judged before any run of it. `deadline`
        (a `time.monotonic()` value; the audit's fix time): no timing pair is started that
        the pairs so far say would end after it, and a run left to finish ends by it."""
        self.root = root
        self.runner = runner
        self.run_command = run_command
        self.steps = steps
        self.timing_runs = timing_runs
        self.max_timing_runs = max_timing_runs
        self.config = config or EngineConfig()
        self.paths = paths
        self._baseline = baseline
        self._again: SmokeRun | None = None
        self._original_findings: dict[EngineConfig, list[RawFinding]] = {}
        self.copy_texts = dict(copy_texts or {})
        self.known_runs = dict(known_runs or {})
        self.no_run = no_run
        self.trace = list(trace)
        self.deadline = deadline
        self.last_runs: list[SmokeRun] = []
        """The patched script's seeded runs in the last `verify` (smoke run, timing runs)."""
        self.patched_runs: dict[str, SmokeRun] = {}
        """The smoke run of each patch `verify` ran (or reused), by `run_key`, and its unseeded
        pair (`run_key` + `UNSEEDED`) when the fix is judged on one."""

    # --- the pipeline ---------------------------------------------------------------------

    def verify(self, patch: Patch, claim: Claim, spec: FixSpec) -> list[Verification]:
        self.last_runs = []
        try:
            with workspace_copy(self.root) as copy:
                return self._verify_on(copy, patch, claim, spec)
        except WorkspaceError as err:  # the tree is too large to copy
            return [Verification(step="patch-applies", ok=False, detail=str(err))]

    def _verify_on(
        self, copy: Path, patch: Patch, claim: Claim, spec: FixSpec
    ) -> list[Verification]:
        """The steps of `verify` on a private copy of the tree."""
        steps: list[Verification] = []
        try:
            touched = apply_patch(copy, patch.diff)
        except PatchError as err:
            return [Verification(step="patch-applies", ok=False, detail=str(err))]
        steps.append(Verification(step="patch-applies", ok=True, detail=", ".join(touched)))
        parsed = _parse_all(copy, touched)
        steps.append(parsed)
        if not parsed.ok:
            return steps
        steps.append(self._static(copy, touched, claim))
        if not steps[-1].ok:
            return steps
        if self.runner is None or self.run_command is None:
            steps.append(Verification(step="smoke-run", ok=False, detail=self.no_run))
            return steps
        if spec.kind is not FixKind.CORRECTNESS and not self.baseline().ok:
            steps.append(self._nothing_to_compare(spec))
            return steps
        went_past = self._original_went_past(copy, touched)
        if went_past:
            return [*steps, went_past]
        inside_one_epoch = spec.per_epoch and _inside_one_epoch(self.baseline(), self.steps)
        if inside_one_epoch:
            # the verdict is known before any run: both versions would time the same code
            steps.append(Verification(step="speed-up", ok=False, detail=inside_one_epoch))
            return steps
        after = self._smoke_run(copy, touched, spec)
        self.last_runs.append(after)
        moved = self._crash_moved_on(copy, touched, after, spec)
        if moved is not None:
            # the error this fix targets is gone; the run stops at another problem
            return [*steps, *moved]
        described = self._on_root(copy, touched, _describe_run(after, self.steps))
        if self._fails_as_before(copy, touched, after):
            described = (
                f"the fixed script fails where the original fails ({self.baseline().detail}): "
                + (
                    self._environment_gap()
                    or "a failure the fix did not cause, which keeps it from being judged "
                    "until it is fixed"
                )
            )
        steps.append(Verification(step="smoke-run", ok=after.ok, detail=described))
        if not after.ok:
            return steps
        untimed = spec.untimed or (
            CUDA_ONLY_WITHOUT_CUDA if spec.cuda_only and after.cuda_available is False else ""
        )
        if untimed:
            # the verdict is known: what the change switches on never runs here, and checking
            # that it ran could cost a run to the script's end (a compile under a CUDA guard)
            steps.append(Verification(step="speed-up", ok=False, detail=untimed))
            return steps
        total, unrun = in_steps = self._missed(copy, touched, after)
        # every changed block runs only after the probed steps (a second training loop, code
        # after the loop): a timing of those steps would run the original's code
        later = unrun if total and len(unrun) == total else []
        executed = self._executed(copy, touched, after, spec, in_steps)
        steps.append(
            executed.model_copy(update={"detail": self._on_root(copy, touched, executed.detail)})
        )
        if not steps[-1].ok:
            return steps
        if spec.unseeded_repeat:
            after = self._with_unseeded_repeat(copy, touched, spec, after)
        if spec.hash_seed_repeat:
            after = self._with_other_hash_seed(copy, touched, spec, after)
        steps.append(self._behaviour(after, spec))
        if steps[-1].ok and spec.kind is FixKind.PERFORMANCE:
            steps.append(
                Verification(
                    step="speed-up",
                    ok=False,
                    detail=f"not timed: every changed block ({_at(later)}) runs only after the "
                    f"{self.steps} steps the timing measures (a run left to finish reached "
                    "it): timing those steps would compare the same code",
                )
                if later
                else self._speed(copy, after, spec)
            )
        return steps

    def _original_went_past(self, copy: Path, touched: list[str]) -> Verification | None:
        """The executed-change verdict known from the original's run alone, when it recorded
        the touched files' lines and went past every change block without taking its branch
        (a `--resume` branch): the fixed run would go past it too, so none is made (on an
        H100, pytorch-cifar's `torch.load` fix cost a 39 s run to learn it)."""
        baseline = self.baseline()
        went_past: list[tuple[str, int]] = []
        for path in touched:
            if path not in baseline.executed_lines:
                return None
            original = (self.root / path).read_text(encoding="utf-8", errors="replace")
            patched = (copy / path).read_text(encoding="utf-8", errors="replace")
            executed = set(baseline.executed_lines[path])
            _, missed = unreached(patched, original, executed)  # the original's blocks
            if not missed or not all(passed_by(original, line, executed) for line in missed):
                return None
            went_past += [(path, line) for line in missed]
        if not went_past:
            return None
        return Verification(
            step="executed-change",
            ok=False,
            detail=f"unverified: the original run went past the code the fix changes "
            f"({_at(went_past)} never ran under `{' '.join(self.run_command or [])}`, its "
            "branch not taken), so a run of the fix would not execute it either: none was made",
        )

    def _crash_moved_on(
        self, copy: Path, touched: list[str], after: SmokeRun, spec: FixSpec
    ) -> list[Verification] | None:
        """For a correctness fix of a script that fails: when the original's error was raised
        on a line the fix changes and the fixed run gets past it (it fails at another place,
        or the same line raising no more), the fix removed that error, and the run stopping
        at a further problem says nothing against it (two `.data[0]` reads of one loop each
        raise IndexError: each fix alone moves the crash to the other). None otherwise."""
        if after.ok or spec.kind is not FixKind.CORRECTNESS or after.error_at is None:
            return None
        before = self.baseline()
        if before.ok or before.error_at is None or after.error_at == before.error_at:
            return None
        path, line = before.error_at
        if path not in touched:
            return None
        original = (self.root / path).read_text(encoding="utf-8", errors="replace")
        patched = (copy / path).read_text(encoding="utf-8", errors="replace")
        if line not in changed_lines(original, patched):
            return None
        after_path, after_line = after.error_at
        if after_path == path and map_line(patched, original, after_line) in (None, line):
            return None  # it still fails on the line the fix wrote, or on the same line
        where = f"{path}:{line}"
        executed = self._executed(copy, touched, after, spec)
        executed = executed.model_copy(
            update={"detail": self._on_root(copy, touched, executed.detail)}
        )
        return [
            Verification(  # not "smoke-run": the run did not complete (`resolved_run_failures`)
                step=CRASH_MOVED_ON,
                ok=True,
                detail=f"the original's error at {where} is gone: the fixed run gets past it "
                f"and stops at another problem ({self._on_root(copy, touched, after.detail)})",
            ),
            executed,
            Verification(
                step="behaviour",
                ok=executed.ok,
                detail=f"the original run failed at {where} ({before.detail}); the fixed run "
                "executes the changed line without that error",
            ),
        ]

    def _fails_as_before(self, copy: Path, touched: list[str], after: SmokeRun) -> bool:
        """The fixed run stops with the original run's error, at the same line of the user's
        code (torchdiffeq's demo without scipy, a seed fix run where the import fails): that
        failure is not the fix's, and saying only that the fixed script failed blames it."""
        if after.ok or after.error_at is None:
            return False
        before = self.baseline()
        if before.ok or before.error_at is None:
            return False
        path, line = after.error_at
        where: int | None = line
        if path in touched:
            patched = (copy / path).read_text(encoding="utf-8", errors="replace")
            original = (self.root / path).read_text(encoding="utf-8", errors="replace")
            where = map_line(patched, original, line)
        same_text = self._on_root(copy, touched, after.detail) == before.detail
        return (path, where) == before.error_at and same_text

    def _on_root(self, copy: Path, touched: list[str], text: str) -> str:
        """`text` about the patched copy (an error's line, lines that never ran) with its
        `path:line`s numbered as in the code under verification, which the diff shows."""
        files = {
            path: (
                (copy / path).read_text(encoding="utf-8", errors="replace"),
                (self.root / path).read_text(encoding="utf-8", errors="replace"),
            )
            for path in touched
        }
        return renumber_refs(text, files)

    def _run_key(self, copy: Path, touched: list[str], spec: FixSpec) -> str:
        """The `run_key` of the patched copy's seeded run."""
        assert self.run_command is not None
        patched = {p: (copy / p).read_text(encoding="utf-8") for p in touched}
        return run_key(
            {**self.copy_texts, **patched},
            self.run_command,
            self.steps,
            touched,
            spec.extra_memory_mb,
        )

    def _smoke_run(
        self, copy: Path, touched: list[str], spec: FixSpec, hash_seed: int = 0
    ) -> SmokeRun:
        """The patched copy's seeded run (under PYTHONHASHSEED `hash_seed`), tracing the
        touched files; reused when this audit already ran the same code with the same call
        (the fixes adopted so far plus one new fix are the code that fix was verified on:
        their combined check is that run again)."""
        assert self.runner is not None and self.run_command is not None
        key = self._run_key(copy, touched, spec) + (f":hash-seed-{hash_seed}" if hash_seed else "")
        run = self.known_runs.get(key)
        if run is None:
            run = smoke_run(
                self.runner,
                copy,
                self.run_command,
                self.steps,
                hash_seed=hash_seed,
                trace=touched,
                extra_memory_mb=spec.extra_memory_mb,
            )
        self.patched_runs[key] = run
        return run

    def patched_run(self, diff: str, spec: FixSpec) -> SmokeRun:
        """One more seeded run of the workspace with `diff` applied: another sample for a
        comparison between two patched versions that the interval has not decided."""
        assert self.runner is not None and self.run_command is not None
        with workspace_copy(self.root) as copy:
            apply_patch(copy, diff)
            return smoke_run(
                self.runner,
                copy,
                self.run_command,
                self.steps,
                extra_memory_mb=spec.extra_memory_mb,
            )

    def original_again(self) -> SmokeRun:
        """A second seeded run of the original (made once, only when a fix's trajectory is out
        of tolerance): how far the original is from repeating itself."""
        if self._again is None:
            assert self.runner is not None and self.run_command is not None
            self._again = smoke_run(self.runner, self.root, self.run_command, self.steps)
        return self._again

    @property
    def baseline_run(self) -> SmokeRun | None:
        """The baseline if it was made (or given)."""
        return self._baseline

    def baseline(self) -> SmokeRun:
        """The original script's seeded run (made once)."""
        if self._baseline is None:
            assert self.runner is not None and self.run_command is not None
            self._baseline = smoke_run(
                self.runner, self.root, self.run_command, self.steps, trace=self.trace or None
            )
        return self._baseline

    # --- steps ----------------------------------------------------------------------------

    def _static(self, copy: Path, touched: list[str], claim: Claim) -> Verification:
        # opt-in rules a fix claims to clear are run too, so their clearing is checked
        config = replace(self.config, select=self.config.select | claim.rules)
        before = self.original_findings(config)
        after = _findings_of(copy, config, self.paths)
        touched_set = set(touched)
        rules_run = _rules_run(config)

        def in_touched(found: list[RawFinding]) -> list[RawFinding]:
            return [f for f in found if f.file in touched_set]

        remaining = [
            rule
            for rule in sorted(claim.rules & rules_run)
            if _count(in_touched(after), rule) >= _count(in_touched(before), rule)
        ]
        if remaining:
            return Verification(
                step="rule-cleared", ok=False, detail=f"still fires: {', '.join(remaining)}"
            )
        known = Counter(_key(f) for f in before)
        unmatched = []
        for found in after:
            if known[_key(found)] > 0:
                known[_key(found)] -= 1
            else:
                unmatched.append(found)
        # a finding on a line the fix edited (a DataLoader call given num_workers keeps its
        # pin-memory-off finding) is the same finding while its rule fires no more often there
        spare: Counter[tuple[str, str]] = Counter()
        for (rule, file, _code), count in known.items():
            spare[(rule, file)] += max(count, 0)
        new = []
        for found in unmatched:
            place = (found.rule, found.file)
            if spare[place] > 0:
                spare[place] -= 1
            elif found.severity.rank >= claim.severity.rank and found.rule not in claim.rules:
                new.append(found)
        if new:
            listed = "; ".join(f"{f.rule} at {f.file}:{f.line} ({f.severity})" for f in new[:5])
            return Verification(step="rule-cleared", ok=False, detail=f"new findings: {listed}")
        unchecked = sorted(claim.rules - rules_run)
        detail = "the rule no longer fires; no new finding of equal or higher severity"
        if unchecked:
            detail = (
                f"{', '.join(unchecked)} is not a static rule: checked only that no new finding "
                "of equal or higher severity appears"
            )
        return Verification(step="rule-cleared", ok=True, detail=detail)

    def _executed(
        self,
        copy: Path,
        touched: list[str],
        after: SmokeRun,
        spec: FixSpec,
        in_steps: tuple[int, list[tuple[str, int]]] | None = None,
    ) -> Verification:
        """The run must execute the patched lines: a run that never reaches them proves
        nothing about the fix (e.g. a script that never imports the patched module). A change
        after the loop (a deferred `.item()` read once the loop ends) cannot run while the
        harness stops the script inside its last step: the script is then run once more, left
        to finish (bounded by the run's time budget), and must reach it and end cleanly. A
        change the run went past without taking (a `--resume` branch before the training
        loop) is unverified at once: no run left to finish would reach it."""
        command = " ".join(self.run_command or [])
        total, missed = in_steps or self._missed(copy, touched, after)
        finished = ""
        gone_past = _passed_by(copy, missed, after)
        if gone_past:
            return Verification(
                step="executed-change",
                ok=False,
                detail=f"unverified: the run did not execute the change ({_at(gone_past)} "
                f"never ran under `{command}`: the run went past "
                f"{'it' if len(gone_past) == 1 else 'them'} without taking "
                f"{'its branch' if len(gone_past) == 1 else 'their branches'})",
            )
        if missed and after.stopped_in_loop and _after_executed(missed, after):
            assert self.runner is not None and self.run_command is not None
            runs = "runs" if len(missed) == 1 else "run"
            left = self._finish_time_left()
            if left is not None and left < (after.wall_s or 0.0) + HARNESS_MARGIN_S:
                return Verification(
                    step="executed-change",
                    ok=False,
                    detail=f"unverified: {_at(missed)} {runs} after the loop, and a run left "
                    f"to finish under `{command}` would end past the fix time ({left:.0f} s "
                    "left); raise --fix-time to verify it",
                )
            whole = smoke_run(
                self.runner,
                copy,
                self.run_command,
                FINISH_STEPS,
                trace=touched,
                extra_memory_mb=spec.extra_memory_mb,
                wall_s=left,
            )
            if not whole.ok or whole.stopped_in_loop:
                capped = "" if left is None else f" (bounded by the fix time left, {left:.0f} s)"
                return Verification(
                    step="executed-change",
                    ok=False,
                    detail=f"unverified: {_at(missed)} {runs} after the loop, and the run left "
                    f"to finish under `{command}` did not end cleanly: {whole.detail}{capped}",
                )
            finished = f" ({_at(missed)} after the loop, in a run left to finish)"
            _, missed = self._missed(copy, touched, whole)
        if missed:
            return Verification(
                step="executed-change",
                ok=False,
                detail=f"unverified: the run did not execute the change ({_at(missed)} "
                f"never ran under `{command}`)",
            )
        return Verification(
            step="executed-change",
            ok=True,
            detail=f"the run executed every changed block ({total}){finished} under `{command}`",
        )

    def _finish_time_left(self) -> float | None:
        """The wall limit of a run left to finish: what the fix time leaves, when that is
        below the harness budget's (None: the budget's). Unbounded in steps, that run took
        its whole budget (280 s) on a GPU with 215 s of a 240 s --fix-time left, so the audit
        ended 95 s past its fix time."""
        if self.deadline is None or self.runner is None:
            return None
        left = max(0.0, self.deadline - time.monotonic())
        return left if left < self.runner.budget.wall_s else None

    def _missed(
        self, copy: Path, touched: list[str], run: SmokeRun
    ) -> tuple[int, list[tuple[str, int]]]:
        """How many change blocks count, and (file, first line) of those `run` never ran."""
        total, missed = 0, []
        for path in touched:
            before = (self.root / path).read_text(encoding="utf-8", errors="replace")
            patched = (copy / path).read_text(encoding="utf-8", errors="replace")
            executed = set(run.executed_lines.get(path, []))
            count, lines = unreached(before, patched, executed)
            total += count
            missed += [(path, line) for line in lines]
        return total, missed

    def _behaviour(self, after: SmokeRun, spec: FixSpec) -> Verification:
        before = self.baseline()
        if not before.ok:  # a correctness fix: the others are not run (`_nothing_to_compare`)
            return Verification(
                step="behaviour",
                ok=True,
                detail=f"{RUN_REPAIRED}({before.detail}); the fixed run completes",
            )
        details: list[str] = []
        ok = True
        if spec.rtol is not None and not before.losses and not after.losses:
            details.append("no loss on either side (an inference script): outputs not compared")
        elif spec.rtol is not None:
            same, text = trajectories_match(before.losses, after.losses, spec.rtol)
            if not same:
                same, text = trajectories_agree(
                    before.losses, after.losses, spec.rtol, self.original_again().losses
                )
            if not same and (spikes := loss_spikes(before.losses)):
                text += (
                    f"; the original's own loss is unstable ({describe(spikes, len(before.losses))}"
                    "): a run whose arithmetic differs parts from it at the first spike, so the "
                    "fix cannot be judged until that is fixed (probe-loss-spikes)"
                )
            ok &= same
            details.append(f"loss trajectory: {text}")
        if spec.kind is FixKind.CORRECTNESS:
            gone, text = spec.symptom(before, after)
            ok &= gone
            details.append(f"symptom: {text}")
        return Verification(step="behaviour", ok=ok, detail="; ".join(details))

    def _nothing_to_compare(self, spec: FixSpec) -> Verification:
        """A fix that does not target the original's failure is judged against the original's
        run; with none to judge against, the fixed version is not run at all (each such run
        could use the whole run budget, and a failing script has one per proposed fix)."""
        then = self._environment_gap() or "fix that failure first"
        return Verification(
            step="smoke-run",
            ok=False,
            detail=f"not run: the original run failed ({self.baseline().detail}), and a "
            f"{spec.kind.value} fix is judged against it: {then}",
        )

    def _environment_gap(self) -> str | None:
        """What to do when the original run failed on the audit's environment, not on the
        code (`evidence.run_gaps`): a third-party package it could not import, a file on this
        machine outside the tree the runs copy, or a CUDA device."""
        before = self.baseline()
        module = before.missing_module
        if module is not None:
            names = project_modules(path for path, _text in _python_files(self.root, self.paths))
            if module not in names:
                return (
                    f"the audit environment lacks the package `{module}`: install it where "
                    "torchdoctor runs and the fix can be judged"
                )
        if needs_cuda(before.detail):
            return "the audit's machine has no CUDA device, which the script needs"
        named = before.missing_file
        if named is not None and is_outside(named, self.root):
            return (
                f"the run cannot see `{named}`, outside the audited folder: put the data "
                "inside it and the fix can be judged"
            )
        return None

    def _speed(self, copy: Path, after: SmokeRun, spec: FixSpec) -> Verification:
        """Interleaved timing runs until the bootstrapped interval of the gain decides, at
        least `timing_runs` per side and at most `max_timing_runs`."""
        assert self.runner is not None and self.run_command is not None
        if spec.cuda_only and after.cuda_available is False:
            return Verification(step="speed-up", ok=False, detail=CUDA_ONLY_WITHOUT_CUDA)
        before_runs = [list(self.baseline().step_times_s)]
        after_runs = [list(after.step_times_s)]
        if not before_runs[0] or not after_runs[0]:  # more runs of as many steps time no more
            return Verification(step="speed-up", ok=False, detail=_TOO_FEW_STEPS)
        result: SpeedUp | None = None
        pair_s = (self.baseline().wall_s or 0.0) + (after.wall_s or 0.0)
        out_of_time = False
        while True:
            if len(before_runs) >= self.timing_runs and _enough(before_runs, after_runs):
                result = speed_up(before_runs, after_runs)
                if result.verdict is not Verdict.INCONCLUSIVE:
                    break
            if len(before_runs) >= max(self.max_timing_runs, self.timing_runs):
                break
            if self.deadline is not None and time.monotonic() + pair_s > self.deadline:
                out_of_time = True
                break
            started = time.monotonic()
            # interleaved, so drift in machine load hits both sides alike
            before_runs.append(
                smoke_run(self.runner, self.root, self.run_command, self.steps).step_times_s
            )
            again = smoke_run(
                self.runner,
                copy,
                self.run_command,
                self.steps,
                extra_memory_mb=spec.extra_memory_mb,
            )
            self.last_runs.append(again)
            after_runs.append(again.step_times_s)
            pair_s = max(pair_s, time.monotonic() - started)
        if out_of_time:
            return self._timed_out(before_runs, after_runs, pair_s)
        if result is None:
            return Verification(step="speed-up", ok=False, detail=_TOO_FEW_STEPS)
        return Verification(
            step="speed-up",
            ok=result.significant,
            detail=f"{result.detail}; {_VERDICTS[result.verdict]}"
            f"{_energy(self.baseline(), after)}{_host_memory(self.baseline(), after)}",
        )

    def _timed_out(
        self, before_runs: list[list[float]], after_runs: list[list[float]], pair_s: float
    ) -> Verification:
        """The speed-up undecided when the fix time leaves no room for another timing pair:
        what the runs so far say, and what one more pair would have cost."""
        pairs = len(before_runs) - 1
        so_far = ""
        if _enough(before_runs, after_runs):
            so_far = f"{speed_up(before_runs, after_runs).detail}; "
        return Verification(
            step="speed-up",
            ok=False,
            detail=f"{so_far}undecided: {pairs} timing pair(s) made, and one more (about "
            f"{pair_s:.0f} s) would end past the fix time; raise --fix-time to decide it",
        )

    def _with_unseeded_repeat(
        self, copy: Path, touched: list[str], spec: FixSpec, after: SmokeRun
    ) -> SmokeRun:
        """Two runs without the harness's seed: only the script's own seeding can match them.
        Like the seeded run, the pair is made once per code and call in an audit (the combined
        check of a seeding fix with the fixes adopted before it repeats that fix's code)."""
        assert self.runner is not None and self.run_command is not None
        repeat_key = self._run_key(copy, touched, spec) + UNSEEDED
        pair = self.known_runs.get(repeat_key)
        if pair is None:
            first = smoke_run(self.runner, copy, self.run_command, self.steps, seed=None)
            second = smoke_run(self.runner, copy, self.run_command, self.steps, seed=None)
            pair = first.model_copy(update={"signals": RunSignals(repeat_losses=second.losses)})
        self.patched_runs[repeat_key] = pair
        signals = after.signals.model_copy(update={"repeat_losses": pair.signals.repeat_losses})
        return pair.model_copy(update={"signals": signals})

    def _with_other_hash_seed(
        self, copy: Path, touched: list[str], spec: FixSpec, after: SmokeRun
    ) -> SmokeRun:
        """`after` with the losses of the same seeded run under another PYTHONHASHSEED, as the
        next launch of the script would draw: where an order followed string hashes, only
        the fixed code gives the same losses."""
        other = self._smoke_run(copy, touched, spec, hash_seed=OTHER_HASH_SEED)
        signals = after.signals.model_copy(update={"other_hash_seed_losses": other.losses})
        return after.model_copy(update={"signals": signals})

    def original_findings(self, config: EngineConfig) -> list[RawFinding]:
        if config not in self._original_findings:
            self._original_findings[config] = _findings_of(self.root, config, self.paths)
        return self._original_findings[config]


def run_key(
    texts: Mapping[str, str],
    command: Sequence[str],
    steps: int,
    trace: Sequence[str],
    extra_memory_mb: int,
) -> str:
    """Names one seeded smoke run: the audited files with `texts` (path -> text) written in,
    the run command and the harness call (steps, traced files, memory on top)."""
    call = [sorted(texts.items()), list(command), steps, sorted(trace), extra_memory_mb]
    return hashlib.sha256(json.dumps(call, ensure_ascii=False).encode("utf-8")).hexdigest()[:32]


_VERDICTS = {
    Verdict.FASTER: f"the interval clears a {MIN_IMPROVEMENT:.0%} gain: faster beyond noise",
    Verdict.NOT_FASTER: f"the interval stays under a {MIN_IMPROVEMENT:.0%} gain: not faster",
    Verdict.INCONCLUSIVE: "the interval straddles the minimum gain after the most repeats allowed",
}


def _energy(before: SmokeRun, after: SmokeRun) -> str:
    """'; energy 61.3 -> 40.2 J/step' when NVML measured both runs."""
    joules = [run.signals.joules_per_step for run in (before, after)]
    if not all(isinstance(j, float) and j > 0 for j in joules):
        return ""
    return f"; GPU energy {joules[0]:.2f} -> {joules[1]:.2f} J/step"


def _host_memory(before: SmokeRun, after: SmokeRun) -> str:
    """'; peak host memory 1.2 -> 5.3 GB' when the sandbox measured both runs."""
    gigabytes = [run.peak_host_mb / 1024 for run in (before, after) if run.peak_host_mb]
    if len(gigabytes) < 2:
        return ""
    return f"; peak host memory {gigabytes[0]:.1f} -> {gigabytes[1]:.1f} GB"


def _at(missed: list[tuple[str, int]]) -> str:
    return ", ".join(f"{path}:{line}" for path, line in missed)


def repairs_the_run(checks: list[Verification]) -> bool:
    """The fix got the original's failed run past its error: the fixed run completes, or stops
    further on (`crash-moved-on`). This phase's other fixes are verified on top of it, not
    refused for want of a working original."""
    return any(
        check.ok
        and (
            check.step == CRASH_MOVED_ON
            or (check.step == "behaviour" and check.detail.startswith(RUN_REPAIRED))
        )
        for check in checks
    )


_TOO_FEW_STEPS = "too few steady-state steps timed: raise --steps"


def _passed_by(copy: Path, missed: list[tuple[str, int]], run: SmokeRun) -> list[tuple[str, int]]:
    """The missed blocks the run went past for good (`reached.passed_by`), when every one of
    them is: no run left to finish would reach them, so none is made."""
    if not missed:
        return []
    for path, line in missed:
        source = (copy / path).read_text(encoding="utf-8", errors="replace")
        if not passed_by(source, line, set(run.executed_lines.get(path, []))):
            return []
    return missed


def _after_executed(missed: list[tuple[str, int]], run: SmokeRun) -> bool:
    """Every missed block comes after a line of its file that ran: code past the loop the
    harness stopped, not a module the script never imports (no second run for that)."""
    return all(any(ran < line for ran in run.executed_lines.get(p, [])) for p, line in missed)


def _inside_one_epoch(run: SmokeRun, steps: int) -> str:
    """Why a fix that keeps a loader's workers between epochs cannot be timed on `run` (no
    loader with workers began a second epoch in it), with what the run shows it would save;
    "" when one did. A run from before loaders were counted (no figure) is timed as before."""
    loaders = run.signals.worker_epochs
    if not loaders or any(epochs > 1 for epochs, _ in loaders):
        return ""
    begun = sorted({length for epochs, length in loaders if epochs and length is not None})
    per_epoch = f" ({' and '.join(map(str, begun))} batches an epoch)" if begun else ""
    waited = run.signals.first_batch_wait_s
    saved = (
        f"; its first batch took {waited:.2f} s with the workers' start, about what each later "
        "epoch would save"
        if waited
        else ""
    )
    return (
        f"not timed: kept workers save their start at each new epoch, and in the {steps} steps "
        f"the run times no loader with workers began a second one{per_epoch}, "
        f"so both versions would run the same code{saved}"
    )


def _enough(before: list[list[float]], after: list[list[float]]) -> bool:
    return sum(map(len, before)) >= 4 and sum(map(len, after)) >= 4


def _parse_all(copy: Path, touched: list[str]) -> Verification:
    for path in touched:
        try:
            ast.parse((copy / path).read_text(encoding="utf-8"), filename=path)
        except SyntaxError as err:
            return Verification(step="parses", ok=False, detail=f"{path}:{err.lineno}: {err.msg}")
    return Verification(step="parses", ok=True, detail=f"{len(touched)} file(s) parse")


def _python_files(root: Path, paths: list[str] | None) -> list[tuple[str, str]]:
    if paths is not None:
        present = [p for p in paths if (root / p).is_file()]
        return [(p, (root / p).read_text(encoding="utf-8", errors="replace")) for p in present]
    files = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if any(part in SKIPPED for part in relative.parts):
            continue
        files.append((relative.as_posix(), path.read_text(encoding="utf-8", errors="replace")))
        if len(files) >= MAX_ANALYSED_FILES:
            break
    return files


def _findings_of(root: Path, config: EngineConfig, paths: list[str] | None) -> list[RawFinding]:
    return analyse_files(_python_files(root, paths), config, workers=1).all_findings()


def _rules_run(config: EngineConfig) -> frozenset[str]:
    return frozenset(analyse_files([], config, workers=1).rules_run)


def _count(found: list[RawFinding], rule: str) -> int:
    return sum(1 for f in found if f.rule == rule)


def _key(found: RawFinding) -> tuple[str, str, str]:
    return found.rule, found.file, _WS.sub(" ", found.code).strip()


def _describe_run(run: SmokeRun, steps: int) -> str:
    if not run.ok:
        return f"the fixed script failed: {run.detail}"
    if run.forwards is not None and not run.losses:  # an inference script: no loss to count
        return f"{run.forwards} of {steps} forward passes recorded ({run.detail})"
    return f"{len(run.losses)} of {steps} steps recorded ({run.detail})"
