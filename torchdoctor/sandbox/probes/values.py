"""Value ranges at the data boundaries, on sampled steps only: per tensor of a batch leaving a
DataLoader and of a root model's forward arguments, the smallest and largest value (over the
samples with no NaN or infinity), whether any value was not finite, and whether it holds
whole numbers (an integer dtype: labels, indices).

Generated input checks take their ranges from these (labels in [0, classes), pixels in the
observed range with a margin). Each observation is one min/max reduction left on the
tensor's device; the host reads them with the other probes' values at flush time, so a
sampled step adds no host sync and an unsampled step adds nothing."""

from __future__ import annotations

from typing import Any

import torch

MAX_TENSORS = 8
"""Tensors observed per batch or forward call (the first ones, one level deep)."""
MAX_BOUNDARIES = 8
MAX_PENDING = 256
"""Observations waiting for a flush; more are dropped (a flush comes every few steps)."""


class _Range:
    def __init__(self, tensor: torch.Tensor) -> None:
        self.dtype = str(tensor.dtype).removeprefix("torch.")
        self.shape = list(tensor.shape)
        self.low = float("inf")
        self.high = float("-inf")
        self.finite = True
        self.integral = True
        self.samples = 0

    def add(self, low: float, high: float, nonfinite: float, fractional: float) -> None:
        self.samples += 1
        self.finite = self.finite and nonfinite == 0
        self.integral = self.integral and fractional == 0
        if nonfinite == 0:  # a sample with a NaN or an infinity says nothing of the range
            self.low = min(self.low, low)
            self.high = max(self.high, high)

    def report(self, index: int) -> dict[str, Any]:
        seen = self.low <= self.high
        return {
            "index": index,
            "dtype": self.dtype,
            "shape": self.shape,
            "min": self.low if seen else None,
            "max": self.high if seen else None,
            "finite": self.finite,
            "integral": self.integral,
            "samples": self.samples,
        }


class ValueRanges:
    def __init__(self) -> None:
        # (boundary, name, file, line) -> per tensor position, its range
        self.ranges: dict[tuple[str, str, str | None, int | None], dict[int, _Range]] = {}
        self._pending: list[tuple[tuple[str, str, str | None, int | None], int, torch.Tensor]] = []

    def on_batch(self, dataset: str, file: str | None, line: int | None, batch: Any) -> None:
        """A batch as the DataLoader hands it to the training step (tuple, list or tensor)."""
        if isinstance(batch, torch.Tensor):
            batch = (batch,)
        if isinstance(batch, list | tuple):
            self._observe(("batch", dataset, file, line), batch)

    def on_model_input(self, model: str, args: Any) -> None:
        self._observe(("model-input", model, None, None), args if isinstance(args, tuple) else ())

    def _observe(self, key: tuple[str, str, str | None, int | None], items: Any) -> None:
        table = self.ranges.get(key)
        if table is None:
            if len(self.ranges) >= MAX_BOUNDARIES:
                return
            table = self.ranges[key] = {}
        with torch.no_grad():
            for index, item in enumerate(items[:MAX_TENSORS]):
                if len(self._pending) >= MAX_PENDING:
                    return
                if not isinstance(item, torch.Tensor) or item.numel() == 0:
                    continue
                if item.dtype == torch.bool or item.is_complex():
                    continue
                table.setdefault(index, _Range(item))
                self._pending.append((key, index, _statistics(item.detach())))

    def on_device(self) -> list[torch.Tensor]:
        return [stats for _, _, stats in self._pending]

    def take(self, vectors: list[list[float]]) -> None:
        for (key, index, _), (low, high, nonfinite, fractional) in zip(
            self._pending, vectors, strict=True
        ):
            self.ranges[key][index].add(low, high, nonfinite, fractional)
        self._pending = []

    def report(self) -> list[dict[str, Any]]:
        return [
            {
                "boundary": boundary,
                "name": name,
                "file": file,
                "line": line,
                "tensors": [r.report(i) for i, r in sorted(table.items()) if r.samples],
            }
            for (boundary, name, file, line), table in self.ranges.items()
        ]


def _statistics(x: torch.Tensor) -> torch.Tensor:
    """[min, max, any non-finite, any fractional], on x's device (no host sync): one pass.
    Floating values count as fractional (labels and indices are integer tensors); their min
    and max are both finite only when every value is."""
    low, high = torch.aminmax(x)
    if not x.is_floating_point():
        zero = torch.zeros((), dtype=torch.float64, device=x.device)
        return torch.stack([low.double(), high.double(), zero, zero])
    nonfinite = ~(torch.isfinite(low) & torch.isfinite(high))
    one = torch.ones((), dtype=torch.float64, device=x.device)
    return torch.stack([low.double(), high.double(), nonfinite.double(), one])
