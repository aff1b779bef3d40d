"""Steps where the training loss jumps far above where it had been: an unstable run.

A loss that swings from 8 to 47 and back within a few steps (pytorch/examples' word language
model's Transformer at its default learning rate of 20) says the step is too large for the
model; it also makes any fix that changes the arithmetic (mixed precision, compile) impossible
to compare with the original step by step, since the two runs part at the first spike.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

SPIKE_RATIO = 3.0
"""A loss more than this many times the median of the steps before it is a spike."""
SETTLED_STEPS = 5
"""Steps before any is judged: the median needs a few, and the first steps move fast."""
WINDOW = 10


class LossSpike(BaseModel):
    model_config = ConfigDict(frozen=True)

    step: int
    loss: float
    median_before: float

    @property
    def ratio(self) -> float:
        return self.loss / self.median_before


def loss_spikes(losses: Sequence[float | None]) -> list[LossSpike]:
    """The spikes of a positive loss (a negative one, an RL objective or a log-likelihood,
    has no scale to judge a jump by)."""
    values = [(step, v) for step, v in enumerate(losses) if v is not None and math.isfinite(v)]
    if len(values) < 2 * SETTLED_STEPS or any(v <= 0 for _, v in values):
        return []
    spikes: list[LossSpike] = []
    for index in range(SETTLED_STEPS, len(values)):
        median = statistics.median(v for _, v in values[max(0, index - WINDOW) : index])
        step, value = values[index]
        if value > SPIKE_RATIO * median:
            spikes.append(LossSpike(step=step, loss=value, median_before=median))
    return spikes


def describe(spikes: Sequence[LossSpike], steps: int) -> str:
    worst = max(spikes, key=lambda s: s.ratio)
    return (
        f"the loss jumps to {worst.loss:.3g} at step {worst.step}, {worst.ratio:.1f}x the median "
        f"of the steps before it ({worst.median_before:.3g}); {len(spikes)} such jump(s) in "
        f"{steps} steps"
    )
