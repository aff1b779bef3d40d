"""The two comparisons fix verification rests on: loss trajectories and step-time samples."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from enum import StrEnum

from pydantic import BaseModel, ConfigDict


def trajectories_match(before: list[float], after: list[float], rtol: float) -> tuple[bool, str]:
    """Same length, and every step within `rtol` (relative to the larger magnitude)."""
    if not before or not after:
        return False, "no loss recorded to compare"
    if len(before) != len(after):
        return False, f"{len(before)} losses before the fix, {len(after)} after"
    worst, worst_step = 0.0, 0
    for step, (a, b) in enumerate(zip(before, after, strict=True)):
        if math.isnan(a) and math.isnan(b):
            continue
        scale = max(abs(a), abs(b), 1e-12)
        deviation = abs(a - b) / scale if math.isfinite(a - b) else math.inf
        if deviation > worst:
            worst, worst_step = deviation, step
    ok = worst <= rtol
    return ok, f"largest relative deviation {worst:.2e} at step {worst_step} (tolerance {rtol:.0e})"


def trajectories_agree(
    before: list[float], after: list[float], rtol: float, original_again: list[float]
) -> tuple[bool, str]:
    """`trajectories_match`, or, when the original itself does not repeat, the same question
    with its spread allowed for: step by step within 3x that spread in a short run, on rolling
    medians in a longer one.

    Non-deterministic GPU kernels make a training run's per-step loss chaotic: past some step
    one seeded run spikes where another does not. On an H200 the ResNet benchmark's fixes that
    cannot change a number (`pin_memory`) measured 0.55 at step 25 against the original while
    another pair of the original's runs differed by 1.7e-2: no step-by-step tolerance separates
    that from a broken fix, and 3x a spiky pair's deviation lets a fix that learns a third as
    fast through. Over 10 steps or more the fix is held to the losses' rolling medians over 5
    steps, within 3x what the original's two runs' medians differ by (at least `rtol`; one pair
    underestimates the spread): a spike is gone, a fix that changes what is learnt is not."""
    same, text = trajectories_match(before, after, rtol)
    floor = worst_deviation(before, original_again)
    if same or floor <= rtol or len(before) != len(after) or _new_nonfinite(before, after):
        return same, text
    if len(before) < 2 * SMOOTHING_STEPS:
        same, text = trajectories_match(before, after, 3 * floor)
        return same, f"{text}; two seeded runs of the original differ by {floor:.2e}"
    medians = rolling_median(before), rolling_median(after)
    median_floor = worst_deviation(medians[0], rolling_median(original_again))
    same, median_text = trajectories_match(*medians, max(rtol, 3 * median_floor))
    return same, (
        f"step by step {text}, but two seeded runs of the original differ by {floor:.2e}; "
        f"rolling median of the losses: {median_text} (the original's two runs: {median_floor:.2e})"
    )


def _new_nonfinite(before: list[float], after: list[float]) -> bool:
    """A NaN or infinite loss where the original's was finite: a failure no spread excuses
    (and one a median would hide)."""
    pairs = zip(before, after, strict=False)
    return any(math.isfinite(a) and not math.isfinite(b) for a, b in pairs)


SMOOTHING_STEPS = 5


def rolling_median(losses: list[float], window: int = SMOOTHING_STEPS) -> list[float]:
    """Each step's median over it and the `window - 1` steps before: an isolated spike (or two)
    is gone, a trend that a fix changes stays."""
    return [statistics.median(losses[max(0, i - window + 1) : i + 1]) for i in range(len(losses))]


def worst_deviation(first: list[float], second: list[float]) -> float:
    """Largest relative step-wise deviation of two runs; 0 when they cannot be compared."""
    if not first or len(first) != len(second):
        return 0.0
    worst = 0.0
    for a, b in zip(first, second, strict=True):
        if math.isfinite(a) and math.isfinite(b):
            worst = max(worst, abs(a - b) / max(abs(a), abs(b), 1e-12))
    return worst


class Timing(BaseModel):
    model_config = ConfigDict(extra="forbid")

    median_s: float
    iqr_s: float
    samples: int
    runs: int = 1


class Verdict(StrEnum):
    """What the bootstrapped interval of the gain says."""

    FASTER = "faster"
    """The whole interval lies above the minimum gain worth a change."""
    NOT_FASTER = "not-faster"
    """The interval lies below the minimum gain (or is centred on a slowdown)."""
    INCONCLUSIVE = "inconclusive"
    """The interval straddles the minimum gain: more repeats could decide."""


class SpeedUp(BaseModel):
    model_config = ConfigDict(extra="forbid")

    before: Timing
    after: Timing
    improvement: float
    """Relative reduction of the median step time (0.25 = 25% faster)."""
    interval: tuple[float, float]
    """95% bootstrap confidence interval of `improvement`."""
    verdict: Verdict
    detail: str

    @property
    def significant(self) -> bool:
        return self.verdict is Verdict.FASTER


MIN_IMPROVEMENT = 0.01
"""Below 1% a performance change is not worth a diff, however certain."""
CONFIDENCE = 0.95
RESAMPLES = 2000


def timing(runs: Sequence[Sequence[float]]) -> Timing:
    samples = [t for run in runs for t in run]
    if len(samples) < 4:
        raise ValueError("at least 4 timing samples are needed")
    q1, _, q3 = statistics.quantiles(samples, n=4)
    return Timing(
        median_s=statistics.median(samples),
        iqr_s=q3 - q1,
        samples=len(samples),
        runs=len([r for r in runs if r]),
    )


def speed_up(
    before: Sequence[float] | Sequence[Sequence[float]],
    after: Sequence[float] | Sequence[Sequence[float]],
    *,
    seed: int = 0,
) -> SpeedUp:
    """The relative gain of the median step time, with a 95% bootstrap interval.

    Steps of one run share that run's conditions (clocks, co-tenants, allocator state), so
    the bootstrap is hierarchical: runs are resampled, then steps within each drawn run.
    The verdict comes from the interval: FASTER when its lower end clears `MIN_IMPROVEMENT`,
    NOT_FASTER when its upper end does not, INCONCLUSIVE in between (more repeats decide).
    A flat list of step times counts as one run.
    """
    runs_before, runs_after = _as_runs(before), _as_runs(after)
    t_before, t_after = timing(runs_before), timing(runs_after)
    improvement = _gain(t_before.median_s, t_after.median_s)
    rng = random.Random(seed)
    gains = sorted(
        _gain(_resampled_median(runs_before, rng), _resampled_median(runs_after, rng))
        for _ in range(RESAMPLES)
    )
    tail = (1 - CONFIDENCE) / 2
    low = gains[int(tail * (RESAMPLES - 1))]
    high = gains[int((1 - tail) * (RESAMPLES - 1))]
    if low > MIN_IMPROVEMENT:
        verdict = Verdict.FASTER
    elif high < MIN_IMPROVEMENT or improvement <= 0:
        verdict = Verdict.NOT_FASTER
    else:
        verdict = Verdict.INCONCLUSIVE
    detail = (
        f"median step {t_before.median_s * 1e3:.2f} ms -> {t_after.median_s * 1e3:.2f} ms "
        f"({improvement:+.1%}, 95% CI [{low:+.1%}, {high:+.1%}]); "
        f"{t_before.samples} / {t_after.samples} steps in {t_before.runs} / {t_after.runs} runs"
    )
    return SpeedUp(
        before=t_before,
        after=t_after,
        improvement=improvement,
        interval=(low, high),
        verdict=verdict,
        detail=detail,
    )


def _as_runs(times: Sequence[float] | Sequence[Sequence[float]]) -> list[list[float]]:
    runs: list[list[float]] = []
    flat: list[float] = []
    for entry in times:
        if isinstance(entry, int | float):
            flat.append(float(entry))
        elif entry:
            runs.append([float(t) for t in entry])
    return [flat, *runs] if flat else runs


def _gain(before_s: float, after_s: float) -> float:
    return (before_s - after_s) / before_s if before_s > 0 else 0.0


def _resampled_median(runs: list[list[float]], rng: random.Random) -> float:
    drawn: list[float] = []
    for _ in runs:
        run = runs[rng.randrange(len(runs))]
        drawn += rng.choices(run, k=len(run))
    return statistics.median(drawn)


class PairedRatio(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ratio: float
    """Geometric mean over pairs of median(after block) / median(before block)."""
    interval: tuple[float, float]
    """95% bootstrap confidence interval of `ratio`."""
    pairs: int


def paired_ratio(
    before: Sequence[Sequence[float]],
    after: Sequence[Sequence[float]],
    *,
    seed: int = 0,
) -> PairedRatio:
    """The ratio of median step times when block i of `after` ran right beside block i of
    `before` (short blocks interleaved, so a pair shares that moment's clocks and co-tenants).

    Each pair gives the ratio of its two blocks' medians; the estimate is their geometric
    mean, and the 95% interval comes from a bootstrap that resamples pairs, then the steps of
    each drawn pair's two blocks. A drift of the step time between pairs cancels out of every
    pair's ratio, where the unpaired bootstrap of `speed_up` counts it as noise of both sides.
    """
    pairs = [(list(b), list(a)) for b, a in zip(before, after, strict=True) if b and a]
    if len(pairs) < 2 or len(pairs) != len(before):
        raise ValueError("at least 2 pairs of non-empty blocks are needed")
    if any(min(b) <= 0 or min(a) <= 0 for b, a in pairs):
        raise ValueError("step times must be positive")
    logs = [math.log(statistics.median(a) / statistics.median(b)) for b, a in pairs]
    rng = random.Random(seed)
    draws: list[float] = []
    for _ in range(RESAMPLES):
        total = 0.0
        for _ in pairs:
            b, a = pairs[rng.randrange(len(pairs))]
            total += math.log(
                statistics.median(rng.choices(a, k=len(a)))
                / statistics.median(rng.choices(b, k=len(b)))
            )
        draws.append(total / len(pairs))
    draws.sort()
    tail = (1 - CONFIDENCE) / 2
    low = math.exp(draws[int(tail * (RESAMPLES - 1))])
    high = math.exp(draws[int((1 - tail) * (RESAMPLES - 1))])
    return PairedRatio(
        ratio=math.exp(statistics.fmean(logs)), interval=(low, high), pairs=len(pairs)
    )
