"""Value bounds from sampled ranges, and the DataLoader call the batch checks are wired into
(pure functions: no sandbox)."""

from __future__ import annotations

from torchdoctor.agent.artifacts.batch_checks import COLLATE, wire_collate
from torchdoctor.agent.artifacts.ranges import value_bound
from torchdoctor.agent.evidence.probe_schema import TensorValues


def _values(low: float, high: float, dtype: str = "float32") -> TensorValues:
    return TensorValues(index=0, dtype=dtype, shape=[8], min=low, max=high, samples=3)


def test_pixels_get_the_observed_range_with_half_its_span_on_each_side() -> None:
    bound = value_bound(_values(0.0, 1.0), floating=True)
    assert bound is not None
    assert (bound.low, bound.high) == (-0.5, 1.5)
    assert bound.breaking > bound.high


def test_labels_must_index_the_classes_and_other_whole_numbers_stay_non_negative() -> None:
    labels = value_bound(_values(0, 3, "int64"), floating=False, classes=4)
    assert labels is not None
    assert (labels.low, labels.high, labels.high_exclusive, labels.breaking) == (0, 4, True, 4)
    counts = value_bound(_values(0, 3, "int64"), floating=False, classes=None)
    assert counts is not None and (counts.low, counts.high, counts.breaking) == (0, None, -1)
    # labels seen above the class count are no class indices: only non-negativity is checked
    beyond = value_bound(_values(0, 7, "int64"), floating=False, classes=4)
    assert beyond is not None and beyond.high is None
    assert value_bound(_values(-2, 3, "int64"), floating=False) is None


def test_nothing_sampled_gives_no_bound() -> None:
    empty = TensorValues(index=0, dtype="float32", shape=[8], samples=0)
    assert value_bound(empty, floating=True) is None


LOADERS = """import torch
from torch.utils.data import DataLoader

train = DataLoader(
    data, batch_size=32, shuffle=True,
)
val = DataLoader(data, 64)
mine = torch.utils.data.DataLoader(data, collate_fn=pad)
"""


def test_the_loader_on_the_observed_line_gets_the_checked_collate() -> None:
    wired = wire_collate(LOADERS, LOADERS, 5)
    assert wired is not None
    assert f"shuffle=True, collate_fn={COLLATE}" in wired
    assert "DataLoader(data, 64)\n" in wired  # the other loader is left alone
    # the same call found after another edit moved it down (matched by order)
    moved = "import jaxtyping\n" + LOADERS
    again = wire_collate(LOADERS, moved, 7)
    assert again is not None and f"DataLoader(data, 64, collate_fn={COLLATE})" in again


def test_a_collate_of_the_users_or_no_loader_on_the_line_is_not_wired() -> None:
    assert wire_collate(LOADERS, LOADERS, 8) is None
    assert wire_collate(LOADERS, LOADERS, 2) is None
