"""bn-batch-of-one: a BatchNorm model trained from a loader that can yield a batch of one."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import kwarg
from torchdoctor.agent.models import Severity

_LOADERS = frozenset({"torch.utils.data.DataLoader", "torch.utils.data.dataloader.DataLoader"})


class BnBatchOfOne(Rule):
    """Detects, in a module that builds BatchNorm layers, a training `DataLoader` (one with
    `shuffle=True`) created without `drop_last=True`.

    Why it matters: when the dataset size is not a multiple of the batch size, the last batch
    is smaller, possibly a single sample: BatchNorm then raises "Expected more than 1 value
    per channel when training", or normalises with the statistics of a handful of samples
    and corrupts its running averages.

    Example:
        model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
        loader = DataLoader(train_set, batch_size=32, shuffle=True)

    Fix: `DataLoader(..., shuffle=True, drop_last=True)` for the training loader (keep the
    evaluation loaders complete).
    """

    id = "bn-batch-of-one"
    point = 2
    severity = Severity.LOW
    title = "BatchNorm with a possibly tiny last batch"
    items: ClassVar[tuple[str, ...]] = ("2.3",)

    def applies(self, ctx: ModuleContext) -> bool:
        return "BatchNorm" in ctx.source and "DataLoader" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        if "BatchNorm" not in ctx.source or "DataLoader" not in ctx.source:
            return
        has_bn = any(
            (ctx.flow.qualname_of(c) or "").startswith("torch.nn.BatchNorm")
            or (ctx.flow.qualname_of(c) or "").startswith("torch.nn.SyncBatchNorm")
            for c in ctx.flow.nodes(ast.Call)
        )
        if not has_bn:
            return
        for call in ctx.flow.nodes(ast.Call):
            if ctx.flow.qualname_of(call) not in _LOADERS:
                continue
            shuffle = kwarg(call, "shuffle")
            drop_last = kwarg(call, "drop_last")
            if not (isinstance(shuffle, ast.Constant) and shuffle.value is True):
                continue
            if drop_last is not None or any(k.arg is None for k in call.keywords):
                continue
            ctx.report(
                self,
                call,
                "the model has BatchNorm and this training loader keeps a possibly tiny last "
                "batch: pass drop_last=True",
            )
