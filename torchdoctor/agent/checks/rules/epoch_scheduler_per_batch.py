"""epoch-scheduler-per-batch: a schedule sized in epochs stepped once per batch."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import enclosing_ifs
from torchdoctor.agent.checks.rules.scheduler_before_optimizer import is_scheduler_step
from torchdoctor.agent.models import Severity

# Schedulers whose period is a count of `step()` calls that scripts almost always give in
# epochs, and the argument that holds that count (its keyword and position after the
# optimizer).
_PERIODS: dict[str, tuple[str, int]] = {
    "torch.optim.lr_scheduler.StepLR": ("step_size", 1),
    "torch.optim.lr_scheduler.MultiStepLR": ("milestones", 1),
    "torch.optim.lr_scheduler.ExponentialLR": ("gamma", 1),
    "torch.optim.lr_scheduler.CosineAnnealingLR": ("T_max", 1),
    "torch.optim.lr_scheduler.CosineAnnealingWarmRestarts": ("T_0", 1),
}
# A literal period this small is an epoch count: a schedule written in batches names
# thousands of steps (or a computed `len(loader) * epochs`).
_MAX_EPOCHS = 1000
# A per-step exponential decay keeps gamma very close to 1; 0.95 per batch is gone in an epoch.
_MIN_PER_STEP_GAMMA = 0.999
_BATCHES = ("loader", "batch", "iter")
_GATE = ("StepLR", "ExponentialLR", "CosineAnnealing")


class EpochSchedulerPerBatch(Rule):
    """Detects `scheduler.step()` of a `StepLR`, `MultiStepLR`, `ExponentialLR` or
    `CosineAnnealingLR` (or warm restarts) whose period is written in epochs (a literal
    `step_size`/milestones/`T_max` under 1,000, an argument named `*epoch*`, a `gamma` below
    0.999) called inside the loop over a data loader's batches, outside a guard that runs it
    once in a while.

    Why it matters: these schedulers count `step()` calls. Stepped per batch, a decay meant
    for epoch 30 happens at batch 30, and the learning rate collapses within the first epoch:
    training stalls without an error.

    Example:
        scheduler = StepLR(optimizer, step_size=30, gamma=0.1)
        for epoch in range(epochs):
            for x, y in train_loader:
                ...
                optimizer.step()
                scheduler.step()

    Not reported: a period computed from the loader or given in steps (`len(loader) * 30`,
    `args.decay_steps`), an epoch-level step after the batch loop, a step under
    `if i % n == 0:`, schedulers meant to step per batch (`OneCycleLR`, `CyclicLR`,
    `LambdaLR`), and loops over a range (a full-batch script's loop is its epoch loop).

    Fix: call `scheduler.step()` once per epoch, after the loop over the batches (or give
    the period in batches: `step_size=30 * len(train_loader)`).
    """

    id = "epoch-scheduler-per-batch"
    point = 4
    severity = Severity.HIGH
    title = "Epoch-level LR scheduler stepped every batch"
    items: ClassVar[tuple[str, ...]] = ("4.3",)

    def applies(self, ctx: ModuleContext) -> bool:
        text = ctx.source
        return ".step(" in text and any(name in text for name in _GATE)

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        for node in ctx.flow.calls_named(("step",)):
            if not is_scheduler_step(ctx, node):
                continue
            if node.args or node.keywords:
                continue  # `step(epoch)` / `step(metric)`: not a count of calls
            assert isinstance(node.func, ast.Attribute)
            period = _epoch_period(ctx, node.func.value)
            if period is None:
                continue
            loop = _batch_loop(ctx, node)
            if loop is None:
                continue
            ctx.report(
                self,
                node,
                f"`{ast.unparse(node.func.value)}` ({period}) counts epochs but steps once per "
                f"batch of `{ast.unparse(loop.iter)}`: the schedule runs len(loader) times too "
                "fast; step it after the batch loop",
            )


def _epoch_period(ctx: ModuleContext, receiver: ast.expr) -> str | None:
    """'StepLR(step_size=30)' when the scheduler `receiver` holds has a period in epochs."""
    for call in ctx.flow.constructors(receiver):
        qual = ctx.flow.qualname_of(call)
        if qual not in _PERIODS:
            continue
        keyword, index = _PERIODS[qual]
        value = next((k.value for k in call.keywords if k.arg == keyword), None)
        if value is None and len(call.args) > index:
            value = call.args[index]
        if value is not None and _in_epochs(value, keyword):
            return f"{qual.rpartition('.')[2]}({keyword}={ast.unparse(value)})"
    return None


def _in_epochs(value: ast.expr, keyword: str) -> bool:
    names = [
        n.id if isinstance(n, ast.Name) else n.attr
        for n in ast.walk(value)
        if isinstance(n, ast.Name | ast.Attribute)
    ]
    if any("epoch" in name.lower() for name in names):
        return not any(b in name.lower() for name in names for b in (*_BATCHES, "step", "len"))
    if names:
        return False  # computed or configured: its unit is unknown
    numbers = [
        n.value
        for n in ast.walk(value)
        if isinstance(n, ast.Constant) and isinstance(n.value, int | float)
    ]
    if not numbers:
        return False
    if keyword == "gamma":
        return all(0 < x < _MIN_PER_STEP_GAMMA for x in numbers)
    return max(numbers) < _MAX_EPOCHS


def _batch_loop(ctx: ModuleContext, call: ast.Call) -> ast.For | None:
    """The innermost loop around `call` when it iterates over batches (not a `range`, not
    an epoch counter) and `call` runs on every iteration of it."""
    for anc in ctx.ancestors(call):
        if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            return None
        if isinstance(anc, ast.While | ast.AsyncFor):
            return None
        if isinstance(anc, ast.For):
            if any(True for _ in enclosing_ifs(ctx, call, anc)):
                return None  # once in a while (`if i % n == 0`, `if last batch`)
            return anc if _over_batches(anc) else None
    return None


def _over_batches(loop: ast.For) -> bool:
    target = ast.unparse(loop.target).lower()
    if "epoch" in target:
        return False
    source = loop.iter
    if isinstance(source, ast.Call) and isinstance(source.func, ast.Name):
        if source.func.id == "range":
            return False
        if source.func.id in ("enumerate", "tqdm", "zip") and source.args:
            source = source.args[0]
    text = ast.unparse(source).lower()
    return "epoch" not in text and any(b in text for b in _BATCHES)
