"""train-loader-no-shuffle: the DataLoader a training loop iterates never shuffles."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.vocabulary import DATALOADERS
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import held_out_name_kind, identifier
from torchdoctor.agent.checks.patterns import has_star_kwargs, kwarg
from torchdoctor.agent.models import Severity

_ORDERING = ("shuffle", "sampler", "batch_sampler")


class TrainLoaderNoShuffle(Rule):
    """Detects a `torch.utils.data.DataLoader` built without `shuffle`, `sampler` or
    `batch_sampler` whose batches a training loop of the same file iterates (the loop calls
    `backward()` and an optimizer step), over a map-style dataset.

    Why it matters: without shuffling every epoch sees the batches in the same order, and
    datasets are often stored sorted (by class, by date, by length): consecutive batches are
    correlated, the gradient estimate is biased within an epoch, and the model fits the order
    (typically the last classes seen). Accuracy ends lower and varies with the file order.

    Not reported: an explicit `shuffle=False` (a deliberate choice: time series, curriculum),
    a sampler of any kind (`DistributedSampler` shuffles), options passed through `**kwargs`
    (`DataLoader(ds, **train_kwargs)`), iterable datasets (they cannot be shuffled by the
    loader), loaders named for validation or test data, loaders no training loop iterates.

    Example:
        train_loader = DataLoader(train_set, batch_size=64)
        for x, y in train_loader:
            ...
            loss.backward()
            optimizer.step()

    Fix: `DataLoader(train_set, batch_size=64, shuffle=True)` (or a sampler that shuffles,
    e.g. `DistributedSampler` with `set_epoch(epoch)` every epoch).
    """

    id = "train-loader-no-shuffle"
    point = 3
    severity = Severity.MEDIUM
    title = "Training DataLoader without shuffling"
    items: ClassVar[tuple[str, ...]] = ("3.4",)

    def applies(self, ctx: ModuleContext) -> bool:
        return "DataLoader" in ctx.source and bool(ctx.loops.training_loops)

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        flow = ctx.flow
        for loop in ctx.loops.training_loops:
            node = loop.node
            if not isinstance(node, ast.For | ast.AsyncFor):
                continue
            for source in flow.sources(node.iter):
                if not isinstance(source, ast.Call) or flow.qualname_of(source) not in DATALOADERS:
                    continue
                if any(kwarg(source, name) is not None for name in _ORDERING):
                    continue
                if has_star_kwargs(source) or len(source.args) > 2:
                    continue  # positional shuffle/sampler, or options we cannot see
                if _held_out(ctx, source) or _iterable(ctx, source):
                    continue
                ctx.report(
                    self,
                    source,
                    "the training loop iterates this DataLoader in the same order every "
                    "epoch: no shuffle, no sampler",
                )


def _held_out(ctx: ModuleContext, loader: ast.Call) -> bool:
    parent = ctx.parents.get(loader)
    names = [identifier(t) for t in getattr(parent, "targets", [])]
    names += [identifier(a) for a in loader.args[:1]]
    return any(held_out_name_kind(n) for n in names if n)


def _iterable(ctx: ModuleContext, loader: ast.Call) -> bool:
    """The dataset is (or may be) an `IterableDataset`: shuffling is not the loader's job."""
    dataset = loader.args[0] if loader.args else kwarg(loader, "dataset")
    if dataset is None:
        return True
    for source in ctx.flow.sources(dataset):
        text = ast.unparse(source)
        if "Iterable" in text or "stream" in text.lower():
            return True
        if isinstance(source, ast.Call) and isinstance(source.func, ast.Name):
            local = ctx.flow.classes.get(source.func.id)
            if local is not None and any("Iterable" in ast.unparse(b) for b in local.bases):
                return True
    return False
