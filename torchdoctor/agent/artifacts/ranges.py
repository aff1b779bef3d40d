"""The value range a generated check accepts for one tensor, from the values the instrumented
runs sampled: floating values in the observed range widened by half its span on each side
(pixels seen in [0, 1] are accepted in [-0.5, 1.5]); whole numbers seen never below zero
(indices, counts) must stay non-negative; class labels must index the model's classes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from torchdoctor.agent.evidence.probe_schema import BoundaryValues, TensorValues
from torchdoctor.agent.probing import RunSummary

MARGIN = 0.5
"""Share of the observed span added on each side of a floating range."""


class Bound(BaseModel):
    """Accepted values: low <= x (<= or <) high; `breaking`: a value outside, for the tests."""

    model_config = ConfigDict(extra="forbid")

    low: float | None
    high: float | None
    high_exclusive: bool = False
    breaking: float = Field(description="a value the check must reject")
    says: str = Field(description="what the check requires, for its error message")
    why: str = Field("", description="where the bound comes from, a comment above the check")


def merged(boundary: str, name: str, runs: list[RunSummary]) -> dict[int, TensorValues]:
    """Per tensor position, the values every run sampled at that boundary (a batch boundary is
    named by its 'file:line')."""
    found: dict[int, TensorValues] = {}
    for run in runs:
        for values in run.value_ranges:
            if values.boundary != boundary or _name(values) != name:
                continue
            for tensor in values.tensors:
                seen = found.get(tensor.index)
                found[tensor.index] = tensor if seen is None else _union(seen, tensor)
    return found


def batch_name(values: BoundaryValues) -> str:
    return f"{values.file}:{values.line}"


def _name(values: BoundaryValues) -> str:
    return values.name if values.boundary == "model-input" else batch_name(values)


def _union(a: TensorValues, b: TensorValues) -> TensorValues:
    lows = [v for v in (a.min, b.min) if v is not None]
    highs = [v for v in (a.max, b.max) if v is not None]
    return a.model_copy(
        update={
            "min": min(lows, default=None),
            "max": max(highs, default=None),
            "finite": a.finite and b.finite,
            "integral": a.integral and b.integral,
            "samples": a.samples + b.samples,
        }
    )


def value_bound(values: TensorValues, floating: bool, classes: int | None = None) -> Bound | None:
    """The range to check, or None when the observations support none."""
    low, high = values.min, values.max
    if low is None or high is None or values.samples == 0:
        return None
    if classes is not None and not floating and low >= 0 and high < classes:
        return Bound(
            low=0,
            high=classes,
            high_exclusive=True,
            breaking=classes,
            says=f"class indices in [0, {classes})",
        )
    if floating:
        span = high - low if high > low else max(abs(high), 1.0)
        lo, hi = low - MARGIN * span, high + MARGIN * span
        return Bound(
            low=_round(lo, down=True),
            high=_round(hi, down=False),
            breaking=_round(hi + span, down=False),
            says=f"values in [{_number(_round(lo, True))}, {_number(_round(hi, False))}]",
            why=f"observed [{low:.4g}, {high:.4g}], widened by half the span on each side",
        )
    if low >= 0:
        return Bound(low=0, high=None, breaking=-1, says="non-negative values")
    return None


def _round(value: float, down: bool) -> float:
    """Four significant digits, rounded outwards (a bound written in code stays readable)."""
    text = f"{value:.4g}"
    rounded = float(text)
    if (down and rounded > value) or (not down and rounded < value):
        step = abs(rounded) * 1e-3 or 1e-3
        rounded = float(f"{rounded - step if down else rounded + step:.4g}")
    return rounded


def range_lines(owner: str, name: str, expression: str, bound: Bound) -> list[str]:
    """Checking statements (4-space indented) raising ValueError naming `owner`."""
    tests = []
    if bound.low is not None:
        tests.append(f"low < {_number(bound.low)}")
    if bound.high is not None:
        tests.append(f"high {'>=' if bound.high_exclusive else '>'} {_number(bound.high)}")
    comment = [f"    # {bound.why}"] if bound.why else []
    return [
        *comment,
        f"    if {expression}.numel():",
        f"        low, high = (v.item() for v in torch.aminmax({expression}))",
        f"        if {' or '.join(tests)}:",
        "            raise ValueError(",
        f"                '{owner}: {name} must hold {bound.says}, '",
        "                f'got [{low}, {high}]'",
        "            )",
    ]


def _number(value: float) -> str:
    """A bound as code writes it: `4`, not `4.0`."""
    return str(int(value)) if value.is_integer() else repr(value)
