"""The value-range probe's reductions (no subprocess): one min/max per tensor left on its
device, read back at flush; a sample with a NaN marks the tensor non-finite without moving
its range; tensors it cannot range (bool, empty) are skipped. And the per-group scoring of
evaluation outputs against the last batch."""

from __future__ import annotations

import pytest
import torch

from torchdoctor.sandbox.probes.groups import GroupMetrics, GroupSpec
from torchdoctor.sandbox.probes.tensors import read_together
from torchdoctor.sandbox.probes.values import ValueRanges


def test_ranges_over_samples_and_a_nan_sample_leaves_the_range_alone() -> None:
    values = ValueRanges()
    labels = torch.tensor([0, 3, 1])
    values.on_batch("Pixels", "train.py", 9, (torch.tensor([[0.25, 0.5]]), labels))
    values.on_batch("Pixels", "train.py", 9, (torch.tensor([[float("nan"), 9.0]]), labels + 1))
    values.on_batch("Pixels", "train.py", 9, [torch.tensor([[0.0, 1.0]]), labels])
    values.on_model_input("Net", (torch.ones(2, 2), torch.zeros(2, dtype=torch.bool)))
    values.on_batch("Pixels", "train.py", 9, torch.empty(0))
    read_together([values])
    batch, model = values.report()  # the empty batch added nothing
    pixels, classes = batch["tensors"]
    assert (pixels["min"], pixels["max"], pixels["samples"]) == (0.0, 1.0, 3)
    assert pixels["finite"] is False and pixels["integral"] is False
    assert (classes["min"], classes["max"], classes["integral"]) == (0, 4, True)
    assert (batch["boundary"], batch["file"], batch["line"]) == ("batch", "train.py", 9)
    assert model["boundary"] == "model-input" and [t["index"] for t in model["tensors"]] == [0]


def test_groups_read_from_an_input_column_and_outputs_of_another_row_count_left_out() -> None:
    metrics = GroupMetrics(GroupSpec("feature:2:1"))
    features = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    labels = torch.tensor([0, 1, 1, 0])  # group 1 (column 2) gets the wrong class twice
    metrics.on_batch((features, labels))
    metrics.on_eval_output((features,), features[:, :2])
    report = metrics.report()
    assert [(g["group"], g["rows"], g["accuracy"]) for g in report["groups"]] == [
        (0, 2, 1.0),
        (1, 2, 0.0),
    ]
    assert report["accuracy_gap"] == 1.0 and report["batches"] == 1
    metrics.on_eval_output((features,), features[:3, :2])  # 3 rows for 4 labels: not scored
    assert metrics.report()["batches"] == 1
    assert "not one value per row" in metrics.report()["skipped"]


def test_one_logit_per_row_is_scored_once_a_binary_criterion_says_how_to_read_it() -> None:
    metrics = GroupMetrics(GroupSpec("feature:0:1"))
    # a standardised 0/1 column (two values, neither whole), float labels as BCE takes them
    features = torch.tensor([[-0.98, 0.5], [-0.98, -0.5], [1.02, 0.5], [1.02, -0.5]])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0])
    logits = features[:, 1] * 4  # positive for rows 0 and 2
    metrics.on_batch((features, labels))
    metrics.on_eval_output((features,), logits)
    assert metrics.report()["batches"] == 0
    assert "no binary criterion" in metrics.report()["skipped"]
    metrics.on_criterion("BCEWithLogitsLoss")
    metrics.on_eval_output((features,), logits.unsqueeze(1))
    report = metrics.report()
    assert [(g["group"], g["accuracy"], g["positive_rate"]) for g in report["groups"]] == [
        (-0.98, 1.0, 0.5),
        (1.02, 0.0, 0.5),
    ]
    probabilities = GroupMetrics(GroupSpec("feature:0:1"))
    probabilities.on_criterion("binary_cross_entropy")
    probabilities.on_batch((features, labels))
    probabilities.on_eval_output((features,), torch.sigmoid(logits))  # 0.5 is the threshold
    assert probabilities.report()["accuracy_gap"] == 1.0


def test_a_continuous_column_is_not_taken_for_groups() -> None:
    metrics = GroupMetrics(GroupSpec("feature:0:1"))
    features = torch.linspace(-2, 2, 100).unsqueeze(1)
    labels = torch.zeros(100, dtype=torch.long)
    metrics.on_batch((features, labels))
    metrics.on_eval_output((features,), torch.zeros(100, 2))
    report = metrics.report()
    assert report["groups"] == [] and "more than 64 values" in report["skipped"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_outputs_on_the_gpu_are_scored_against_labels_left_on_the_host() -> None:
    metrics = GroupMetrics(GroupSpec("batch:2:1"))
    labels, groups = torch.tensor([0, 1, 1, 0]), torch.tensor([0, 0, 1, 1])
    metrics.on_batch((torch.zeros(4, 2), labels, groups))
    logits = torch.eye(2)[torch.tensor([0, 1, 0, 1])].cuda()  # group 1 gets the wrong class
    metrics.on_eval_output((torch.zeros(4, 2).cuda(),), logits)
    report = metrics.report()
    assert [(g["group"], g["accuracy"]) for g in report["groups"]] == [(0, 1.0), (1, 0.0)]
