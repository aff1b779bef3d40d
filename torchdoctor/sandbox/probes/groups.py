"""Per-group metrics over the script's own evaluation outputs (item 12.1), when the project
declares where each row's group is (`[tool.torchdoctor.groups]`): a tensor of the batch, or a
column of the model's first input. A root forward in evaluation (the module in eval mode, or
grad disabled) whose first output is [rows, classes] is scored against the labels of the
batch the DataLoader last handed out: per group, rows, correct predictions and predictions of
class 1 (the positive rate of a binary classifier). Only evaluation calls read values back,
so training steps pay nothing."""

from __future__ import annotations

from typing import Any

import torch

from torchdoctor.sandbox.probes.tensors import first_float

MAX_GROUPS = 64


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
        self.counts: dict[int, list[int]] = {}
        self.batches = 0
        self.skipped = ""

    def on_batch(self, batch: Any) -> None:
        self.last_batch = batch if isinstance(batch, tuple | list) else None

    def on_eval_output(self, args: Any, output: Any) -> None:
        logits = first_float(output)
        batch = self.last_batch
        if logits is None or logits.dim() != 2 or batch is None:
            return
        rows = logits.shape[0]
        labels = _at(batch, self.spec.labels)
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
            predicted = logits.detach().argmax(dim=1)
            table = torch.stack(
                [groups.detach().long(), (predicted == labels).long(), (predicted == 1).long()],
                dim=1,
            ).cpu()
        for group, correct, positive in table.tolist():
            if group not in self.counts and len(self.counts) >= MAX_GROUPS:
                continue
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


def _at(batch: tuple[Any, ...] | list[Any], index: int) -> torch.Tensor | None:
    item = batch[index] if index < len(batch) else None
    return item if isinstance(item, torch.Tensor) else None
