"""bn-batch-of-one: a BatchNorm model trained from a loader that can yield a batch of one."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.held_out import held_out_name_kind
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import kwarg
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_LOADERS = frozenset({"torch.utils.data.DataLoader", "torch.utils.data.dataloader.DataLoader"})
TRAINING_SET_SIZES = {
    "torchvision.datasets.MNIST": 60000,
    "torchvision.datasets.FashionMNIST": 60000,
    "torchvision.datasets.KMNIST": 60000,
    "torchvision.datasets.CIFAR10": 50000,
    "torchvision.datasets.CIFAR100": 50000,
}
"""The training splits of fixed-size torchvision datasets: with a literal batch size, the size
of the last batch is known."""
SMALLEST_SAFE_LAST_BATCH = 8
"""A last batch this large trains BatchNorm as well as any other: fewer samples make noisy
statistics, one sample raises."""


class BnBatchOfOne(Rule):
    """Detects, in a module that builds BatchNorm layers, a training `DataLoader` (one with
    `shuffle=True`) created without `drop_last=True`.

    Why it matters: when the dataset size is not a multiple of the batch size, the last batch
    is smaller, possibly a single sample: BatchNorm then raises "Expected more than 1 value
    per channel when training", or normalises with the statistics of a handful of samples
    and corrupts its running averages.

    Not reported: loaders of held-out data (`train=False`, `val_loader`: evaluation runs
    BatchNorm in eval mode), and a fixed-size torchvision training set whose last batch with
    the literal batch size is empty or large (FashionMNIST's 60,000 in batches of 64 leave 32).

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
    triggers = Triggers(("DataLoader",))

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
            if _held_out(ctx, call) or _last_batch_is_safe(ctx, call):
                continue
            ctx.report(
                self,
                call,
                "the model has BatchNorm and this training loader keeps a possibly tiny last "
                "batch: pass drop_last=True",
            )


def _held_out(ctx: ModuleContext, loader: ast.Call) -> bool:
    """A loader of held-out data, by what it loads or the name it is bound to (ignite's
    FashionMNIST notebook shuffles its validation loader too)."""
    statement = ctx.parents.get(loader)
    names = statement.targets if isinstance(statement, ast.Assign) else []
    if any(isinstance(n, ast.Name) and held_out_name_kind(n.id) for n in names):
        return True
    return ctx.flow.held_out_kind(loader) is not None


def _last_batch_is_safe(ctx: ModuleContext, loader: ast.Call) -> bool:
    """The loader reads a fixed-size torchvision training set in literal batches whose last
    one is empty or at least `SMALLEST_SAFE_LAST_BATCH` samples."""
    dataset = loader.args[0] if loader.args else kwarg(loader, "dataset")
    batch = loader.args[1] if len(loader.args) > 1 else kwarg(loader, "batch_size")
    size = _training_set_size(ctx, dataset)
    batch_size = _literal_int(ctx, batch)
    if size is None or batch_size is None or batch_size <= 0:
        return False
    remainder = size % batch_size
    return remainder == 0 or remainder >= SMALLEST_SAFE_LAST_BATCH


def _training_set_size(ctx: ModuleContext, dataset: ast.expr | None) -> int | None:
    values = ctx.flow.definitions(dataset) if isinstance(dataset, ast.Name) else [dataset]
    if len(values) != 1 or not isinstance(values[0], ast.Call):
        return None
    train = kwarg(values[0], "train")
    if train is not None and not (isinstance(train, ast.Constant) and train.value is True):
        return None  # `train=is_training`: which split is read is decided at run time
    return TRAINING_SET_SIZES.get(ctx.flow.qualname_of(values[0]) or "")


def _literal_int(ctx: ModuleContext, node: ast.expr | None) -> int | None:
    """An int literal, or a name bound once to one (`BATCH_SIZE = 64`)."""
    values = ctx.flow.definitions(node) if isinstance(node, ast.Name) else [node]
    if len(values) != 1:
        return None
    value = values[0]
    if isinstance(value, ast.Constant) and type(value.value) is int:
        return value.value
    return None
