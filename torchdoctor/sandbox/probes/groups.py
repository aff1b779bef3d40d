"""Per-group metrics over the script's own evaluation outputs (item 12.1), when the project
declares where each row's group is (`[tool.torchdoctor.groups]`): a tensor of the batch, or a
column of the model's first input. A root forward in evaluation (the module in eval mode, or
grad disabled) whose first output is [rows, classes], or one value per row once a binary
criterion says whether it is a logit or a probability, is scored against the labels of the
batch the DataLoader last handed out: per group, rows, correct predictions and predictions of
class 1 (the positive rate of a binary classifier). A group is a value of the column (a
standardised 0/1 column keeps its two values); a column of more than MAX_GROUPS values is
continuous, not groups. Only evaluation calls read values back, so training steps pay
nothing."""

from __future__ import annotations

from typing import Any

import torch

from torchdoctor.sandbox.probes.tensors import first_float

MAX_GROUPS = 64
BINARY_THRESHOLDS = {
    "BCEWithLogitsLoss": 0.0,
    "binary_cross_entropy_with_logits": 0.0,
    "BCELoss": 0.5,
    "binary_cross_entropy": 0.5,
}
"""Where a single output per row turns positive, by the criterion the run trained it with."""


class GroupSpec:
    """`batch:2:1` (groups: batch tensor 2; labels: batch tensor 1) or `feature:3:1` (groups:
    column 3 of the model's first input)."""

    def __init__(self, text: str) -> None:
        where, position, labels = text.split(":")
        if where not in ("batch", "feature"):
            raise ValueError(f"--groups: {where!r} is neither batch nor feature")
        self.text = text
        self.where = where
        self.position = int(position)
        self.labels = int(labels)


class GroupMetrics:
    def __init__(self, spec: GroupSpec) -> None:
        self.spec = spec
        self.last_batch: tuple[Any, ...] | list[Any] | None = None
        self.counts: dict[int | float, list[int]] = {}
        self.batches = 0
        self.skipped = ""
        self.continuous = False
        self.threshold: float | None = None

    def on_batch(self, batch: Any) -> None:
        self.last_batch = batch if isinstance(batch, tuple | list) else None

    def on_criterion(self, name: str) -> None:
        """A loss called by name (module class or functional): a binary one says how to read
        a single output per row."""
        self.threshold = BINARY_THRESHOLDS.get(name, self.threshold)

    def on_eval_output(self, args: Any, output: Any) -> None:
        logits = first_float(output)
        batch = self.last_batch
        if logits is None or batch is None or self.continuous:
            return
        single = logits.dim() == 1 or (logits.dim() == 2 and logits.shape[1] == 1)
        if not single and logits.dim() != 2:
            return
        if single and self.threshold is None:
            self.skipped = (
                "the model gives one value per row and no binary criterion (BCEWithLogitsLoss, "
                "BCELoss) was seen to say whether it is a logit or a probability"
            )
            return
        rows = logits.shape[0]
        labels = _at(batch, self.spec.labels)
        if labels is not None and labels.dim() == 2 and labels.shape[1] == 1:
            labels = labels.reshape(-1)
        if self.spec.where == "batch":
            groups = _at(batch, self.spec.position)
        else:
            first = args[0] if isinstance(args, tuple) and args else None
            ok = isinstance(first, torch.Tensor) and first.dim() == 2
            groups = first[:, self.spec.position] if ok else None  # type: ignore[index]
        for name, tensor in (("labels", labels), ("groups", groups)):
            if tensor is None or tuple(tensor.shape) != (rows,):
                self.skipped = f"the {name} are not one value per row of the model's output"
                return
        assert labels is not None and groups is not None
        with torch.no_grad():
            scores = logits.detach()
            if single:
                predicted = (scores.reshape(-1) > (self.threshold or 0.0)).long()
            else:
                predicted = scores.argmax(dim=1)
            # on the host: the DataLoader's labels often stay there while the model's input
            # goes to the GPU
            predicted, truth = predicted.cpu(), labels.detach().cpu()
            hits = torch.stack([predicted == truth, predicted == 1], dim=1).long()
            keys = groups.detach().cpu()
        values = keys.tolist() if keys.is_floating_point() else keys.long().tolist()
        for key, (correct, positive) in zip(values, hits.tolist(), strict=True):
            group = _key(key)
            if group not in self.counts and len(self.counts) >= MAX_GROUPS:
                self.continuous = True
                self.counts.clear()
                self.skipped = (
                    f"the group column has more than {MAX_GROUPS} values: a continuous column, "
                    "not groups"
                )
                return
            entry = self.counts.setdefault(group, [0, 0, 0])
            entry[0] += 1
            entry[1] += correct
            entry[2] += positive
        self.batches += 1

    def report(self) -> dict[str, Any]:
        groups = [
            {
                "group": group,
                "rows": rows,
                "accuracy": correct / rows,
                "positive_rate": positive / rows,
            }
            for group, (rows, correct, positive) in sorted(self.counts.items())
        ]
        accuracies = [g["accuracy"] for g in groups]
        return {
            "spec": self.spec.text,
            "batches": self.batches,
            "groups": groups,
            "accuracy_gap": max(accuracies) - min(accuracies) if len(groups) > 1 else None,
            "skipped": self.skipped,
        }


def _key(value: float) -> int | float:
    """A group's name: the whole number it is, else the value to 4 decimals (a standardised
    0/1 column's two values)."""
    return int(value) if float(value).is_integer() else round(value, 4)


def _at(batch: tuple[Any, ...] | list[Any], index: int) -> torch.Tensor | None:
    item = batch[index] if index < len(batch) else None
    return item if isinstance(item, torch.Tensor) else None
