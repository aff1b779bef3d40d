"""torch.compile's modes tried in order of cost, each verified like any fix.

Once `model.compile()` (the default mode) is verified, the training step's forward and loss
compiled as one function (`step_graph`: the loss fuses with the model's output layer; +1.6% a
step on GPT-2 on an H100 and an H200, at no extra compile time), then
`max-autotune-no-cudagraphs` (Triton autotuning of matmuls and convolutions: minutes of
compilation), `reduce-overhead` (CUDA graphs: launch overhead gone, needs static shapes and
keeps graph memory) and then `max-autotune` (both), each on the best scope so far, are verified
the same way: on GPT-2's verified fixes on an H200 the first two gained 1.0% and 1.8% a step,
both together 3.5%. A costlier mode is kept only when its steady step is faster than the best
mode so far beyond noise (the bootstrapped interval of the gain clears the minimum; an
undecided interval gets more interleaved runs of both, up to the verifier's maximum), so an
autotuning that buys 0.5% is not worth its compile time. Each mode's compile time (the run's
time above its steady state, beyond what the original spends on its own first steps), the step
from which that cost is paid back, and the run's peak host memory are reported.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.codemods.no_torch_compile import COMPILE_MODES
from torchdoctor.agent.fixes.diffs import unified_diff
from torchdoctor.agent.fixes.models import FixTarget, Patch, SmokeRun
from torchdoctor.agent.fixes.stats import Verdict, speed_up
from torchdoctor.agent.fixes.time_budget import TimeBudget
from torchdoctor.agent.fixes.verify import Claim, FixSpec, Verifier
from torchdoctor.agent.models import Evidence, Finding, Verification
from torchdoctor.agent.safefs import GuardedTree

RULE = "no-torch-compile"
LADDER_SOURCE = "torchdoctor-compile-ladder"


class Rung(BaseModel):
    """One compile mode as measured."""

    model_config = ConfigDict(extra="forbid")

    mode: str
    verified: bool
    why_not: str = ""
    steady_ms: float | None = None
    compile_s: float | None = None
    break_even_step: int | None = None
    """First step at which the mode's total time falls below the original's (None: never)."""
    peak_host_gb: float | None = None
    versus: str = ""
    """Its steady step against the best cheaper mode: gain, interval, runs, verdict."""

    def describe(self) -> str:
        if not self.verified:
            return f"{self.mode}: not verified ({self.why_not})"
        parts = [f"steady step {self.steady_ms:.2f} ms"]
        if self.compile_s is not None:
            parts.append(f"compile {self.compile_s:.1f} s")
        if self.break_even_step is not None:
            parts.append(f"pays back from step {self.break_even_step}")
        elif self.compile_s is not None:
            parts.append("never pays back")
        if self.peak_host_gb is not None:
            parts.append(f"peak host memory {self.peak_host_gb:.1f} GB")
        if self.versus:
            parts.append(self.versus)
        return f"{self.mode}: {', '.join(parts)}"


def one_off_s(run: SmokeRun) -> float | None:
    """Time a run spends beyond its steady state: the job's wall time less every step (the
    first one included) at the median steady step time. Start-up is in it on both sides of a
    comparison; compilation and CUDA-graph recording only on the compiled side."""
    if run.wall_s is None or not run.step_times_s:
        return None
    steps = len(run.step_times_s) + 1
    return max(0.0, run.wall_s - steps * statistics.median(run.step_times_s))


def measure(mode: str, baseline: SmokeRun, runs: list[SmokeRun]) -> Rung:
    """A verified mode's figures from its runs against the original's baseline run."""
    steady = statistics.median(t for run in runs for t in run.step_times_s)
    before = statistics.median(baseline.step_times_s)
    costs = [c for run in runs if (c := one_off_s(run)) is not None]
    base_cost = one_off_s(baseline) or 0.0
    compile_s = max(0.0, statistics.median(costs) - base_cost) if costs else None
    saving = before - steady
    break_even = None
    if saving > 0 and compile_s is not None:
        break_even = 1 + int(compile_s / saving)
    peaks = [run.peak_host_mb for run in runs if run.peak_host_mb is not None]
    return Rung(
        mode=mode,
        verified=True,
        steady_ms=steady * 1e3,
        compile_s=compile_s,
        break_even_step=break_even,
        peak_host_gb=max(peaks) / 1024 if peaks else None,
    )


def climb(
    verifier: Verifier,
    finding: Finding,
    default_runs: list[SmokeRun],
    say: Callable[[str], None] = lambda _line: None,
    modes: tuple[str, ...] = COMPILE_MODES,
    time_left: TimeBudget | None = None,
) -> Finding:
    """`finding` (its default-mode compile fix verified, measured by `default_runs`) with the
    fastest of `modes` that beat the cheaper ones beyond noise as its fix, and the ladder
    reported (`modes` narrows the ladder when compile time is scarce; no mode is tried that
    `time_left` says would end too late)."""
    codemod = codemod_for(RULE)
    assert codemod is not None and finding.fix is not None
    source = GuardedTree(verifier.root).read_text(finding.file)
    spec = FixSpec.of(codemod)
    claim = Claim(frozenset({RULE}), finding.severity)
    time_left = time_left or TimeBudget(None)
    baseline = verifier.baseline()
    rungs = [measure("default", baseline, default_runs)]
    best: dict[str, str] = {}
    best_runs, best_diff = default_runs, finding.fix.diff
    chosen_why = "the default mode: no costlier mode was faster beyond noise"
    for change in _changes(modes):
        tried = {**best, **change}
        label = _label(tried)
        target = FixTarget.from_finding(finding)
        target = target.model_copy(update={"data": {**target.data, **tried}})
        fixed = codemod.transform(source, target)
        if fixed is None:
            why = codemod.explain(source, target) or "the codemod does not apply"
            rungs.append(Rung(mode=label, verified=False, why_not=why))
            continue
        if not time_left.fits(compiles=True, adds_a_fix=False):
            rungs.append(Rung(mode=label, verified=False, why_not="the time budget ran out"))
            continue
        say(f"  compile ladder: verifying {label}")
        diff = unified_diff(finding.file, source, fixed)
        patch = Patch(finding_id=finding.id, rule=RULE, diff=diff, files=[finding.file])
        with time_left.measuring(compiles=True):
            checks = verifier.verify(patch, claim, spec)
        failed = next((c for c in checks if not c.ok), None)
        if failed is not None:
            why = f"{failed.step}: {failed.detail.splitlines()[0] if failed.detail else ''}"
            rungs.append(Rung(mode=label, verified=False, why_not=why))
            continue
        runs = list(verifier.last_runs)
        versus = speed_up([r.step_times_s for r in best_runs], [r.step_times_s for r in runs])
        while (
            versus.verdict is Verdict.INCONCLUSIVE
            and len(runs) < verifier.max_timing_runs
            and time_left.fits(compiles=True, adds_a_fix=False)
        ):
            # undecided: more interleaved runs of both versions, as for a fix's own speed-up
            more = [verifier.patched_run(best_diff, spec), verifier.patched_run(diff, spec)]
            if not all(run.ok and run.step_times_s for run in more):
                break
            best_runs, runs = [*best_runs, more[0]], [*runs, more[1]]
            versus = speed_up([r.step_times_s for r in best_runs], [r.step_times_s for r in runs])
        rung = measure(label, baseline, runs)
        best_label = _label(best)
        rungs.append(
            rung.model_copy(
                update={
                    "versus": f"{versus.improvement:+.1%} against {best_label} (95% CI "
                    f"[{versus.interval[0]:+.1%}, {versus.interval[1]:+.1%}], "
                    f"{len(runs)} run(s) a side, {versus.verdict})"
                }
            )
        )
        if versus.verdict is Verdict.FASTER:
            chosen_why = (
                f"{label}: faster than {best_label} beyond noise "
                f"({versus.improvement:+.1%}, 95% CI [{versus.interval[0]:+.1%}, "
                f"{versus.interval[1]:+.1%}])"
            )
            best, best_runs, best_diff = tried, runs, diff
    detail = "; ".join(r.describe() for r in rungs) + f"; chosen: {chosen_why}"
    say(f"  compile ladder: {detail}")
    step = Verification(step="compile-ladder", ok=True, detail=detail)
    fix = finding.fix.model_copy(
        update={"diff": best_diff, "verification": [*finding.fix.verification, step]}
    )
    evidence = list(finding.evidence)
    if best:
        evidence.append(
            Evidence(
                source=LADDER_SOURCE,
                kind="static",
                message=f"torch.compile mode chosen by measurement: {_label(best)}",
                file=finding.file,
                line=finding.line,
                # the mode always named: a replay (combination, apply) rebuilds from it
                data={"compile_mode": "default", **best},
            )
        )
    return finding.model_copy(update={"fix": fix, "evidence": evidence})


def _changes(modes: tuple[str, ...]) -> list[dict[str, str]]:
    """What each rung changes on the best configuration so far: the step's forward and loss
    as one graph first (no compile time beyond the default's), then the costlier modes."""
    return [
        {"compile_scope": "step"},
        *({"compile_mode": mode} for mode in COMPILE_MODES[1:] if mode in modes),
    ]


def _label(data: dict[str, str]) -> str:
    """`default`, `reduce-overhead`, `default, step as one graph`: what a rung compiled."""
    mode = data.get("compile_mode", "default")
    return f"{mode}, step as one graph" if data.get("compile_scope") == "step" else mode


def ladder_applies(finding: Finding, root: Path) -> bool:
    """A verified default-mode compile fix on a file that is still there."""
    return (
        finding.rule == RULE
        and finding.fix is not None
        and finding.fix.verified
        and (root / finding.file).is_file()
    )
