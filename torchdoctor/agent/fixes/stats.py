"""The two comparisons fix verification rests on: loss trajectories and step-time samples."""

from __future__ import annotations

import math
import statistics

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


class Timing(BaseModel):
    model_config = ConfigDict(extra="forbid")

    median_s: float
    iqr_s: float
    samples: int


class SpeedUp(BaseModel):
    model_config = ConfigDict(extra="forbid")

    before: Timing
    after: Timing
    improvement: float
    """Relative reduction of the median step time (0.25 = 25% faster)."""
    significant: bool
    detail: str


MIN_IMPROVEMENT = 0.03
NOISE_FACTOR = 2.0


def timing(samples: list[float]) -> Timing:
    if len(samples) < 4:
        raise ValueError("at least 4 timing samples are needed")
    q1, _, q3 = statistics.quantiles(samples, n=4)
    return Timing(median_s=statistics.median(samples), iqr_s=q3 - q1, samples=len(samples))


def speed_up(before: list[float], after: list[float]) -> SpeedUp:
    """Significant when the median gain beats 2x the larger IQR and 3% of the baseline."""
    t_before, t_after = timing(before), timing(after)
    gain = t_before.median_s - t_after.median_s
    noise = NOISE_FACTOR * max(t_before.iqr_s, t_after.iqr_s)
    improvement = gain / t_before.median_s if t_before.median_s > 0 else 0.0
    significant = gain > noise and improvement > MIN_IMPROVEMENT
    detail = (
        f"median step {t_before.median_s * 1e3:.2f} ms -> {t_after.median_s * 1e3:.2f} ms "
        f"({improvement:+.1%}); IQR {t_before.iqr_s * 1e3:.2f} / {t_after.iqr_s * 1e3:.2f} ms; "
        f"{t_before.samples} / {t_after.samples} steps"
    )
    return SpeedUp(
        before=t_before,
        after=t_after,
        improvement=improvement,
        significant=significant,
        detail=detail,
    )
