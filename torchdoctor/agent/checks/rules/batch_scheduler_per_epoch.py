"""batch-scheduler-per-epoch: a schedule sized in batches stepped once per epoch."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import identifier, kwarg
from torchdoctor.agent.checks.loops import walk_tree
from torchdoctor.agent.checks.rules.scheduler_before_optimizer import is_scheduler_step
from torchdoctor.agent.models import Severity

# Schedulers that count `step()` calls, and where their period is given (keyword, position
# after the optimizer). OneCycleLR's `steps_per_epoch` makes it a per-batch schedule.
_PERIODS: dict[str, tuple[str, int]] = {
    "torch.optim.lr_scheduler.OneCycleLR": ("total_steps", 2),
    "torch.optim.lr_scheduler.CosineAnnealingLR": ("T_max", 1),
    "torch.optim.lr_scheduler.CosineAnnealingWarmRestarts": ("T_0", 1),
    "torch.optim.lr_scheduler.StepLR": ("step_size", 1),
    "torch.optim.lr_scheduler.MultiStepLR": ("milestones", 1),
    "torch.optim.lr_scheduler.LinearLR": ("total_iters", 3),
    "torch.optim.lr_scheduler.PolynomialLR": ("total_iters", 1),
}
# A period computed from the number of batches: `len(train_loader) * epochs`,
# `num_training_steps`, `args.total_iters`.
_BATCH_WORDS = re.compile(r"loader|batches|iters|iterations|steps", re.IGNORECASE)
_GATE = ("OneCycleLR", "CosineAnnealing", "StepLR", "LinearLR", "PolynomialLR")


class BatchSchedulerPerEpoch(Rule):
    """Detects `scheduler.step()` called once per epoch (in a loop whose body trains through
    an inner batch loop or a local training function, after that inner loop) on a scheduler
    whose period is counted in batches: a `OneCycleLR` given `steps_per_epoch` or a
    `total_steps` computed from the loader, or a `CosineAnnealingLR` / `StepLR` /
    `MultiStepLR` / `LinearLR` / `PolynomialLR` whose period mentions the loader's length or a
    count of steps or iterations (`T_max=len(train_loader) * epochs`, `num_training_steps`).

    Why it matters: these schedulers count `step()` calls. Sized for every batch but stepped
    once per epoch, the schedule advances len(loader) times too slowly: a one-cycle warm-up
    never ends, a cosine decay never leaves the maximum learning rate, and training finishes
    with the LR it started with.

    Not reported: steps inside the batch loop, steps with an argument (`step(epoch)`,
    `step(metric)`), periods written in epochs (`T_max=args.epochs`), schedulers defined in
    another file (their period is not known here).

    Example:
        scheduler = OneCycleLR(optimizer, max_lr=0.1, epochs=epochs,
                               steps_per_epoch=len(train_loader))
        for epoch in range(epochs):
            for x, y in train_loader:
                ...
                optimizer.step()
            scheduler.step()

    Fix: call `scheduler.step()` after every `optimizer.step()`, inside the batch loop (or
    size the schedule in epochs: `T_max=epochs`).
    """

    id = "batch-scheduler-per-epoch"
    point = 4
    severity = Severity.HIGH
    title = "Batch-level LR scheduler stepped once per epoch"
    items: ClassVar[tuple[str, ...]] = ("4.3",)

    def applies(self, ctx: ModuleContext) -> bool:
        text = ctx.source
        return ".step(" in text and any(name in text for name in _GATE)

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        training = {id(loop.node) for loop in ctx.loops.training_loops}
        for node in ctx.flow.calls_named(("step",)):
            if node.args or node.keywords or not is_scheduler_step(ctx, node):
                continue
            assert isinstance(node.func, ast.Attribute)
            loop = _innermost_loop(ctx, node)
            if loop is None or id(loop) in training or not ctx.loops.trains(loop.body):
                continue  # per batch, or not in a loop that trains through an inner one
            period = _batch_period(ctx, node.func.value)
            if period is None:
                continue
            ctx.report(
                self,
                node,
                f"`{ast.unparse(node.func.value)}` is sized in batches ({period}) but steps "
                f"once per pass of the loop of line {loop.lineno}: the schedule advances "
                "len(loader) times too slowly; step it after every optimizer step",
                data={"loop_line": loop.lineno},
            )


def _innermost_loop(ctx: ModuleContext, node: ast.AST) -> ast.For | ast.While | None:
    for anc in ctx.ancestors(node):
        if isinstance(anc, ast.For | ast.While):
            return anc
        if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return None
    return None


def _batch_period(ctx: ModuleContext, receiver: ast.expr) -> str | None:
    """The batch-counted period of the scheduler `receiver` is bound to, as written."""
    for value in ctx.flow.definitions(receiver):
        if not isinstance(value, ast.Call):
            continue
        qual = ctx.flow.qualname_of(value) or ""
        if qual not in _PERIODS:
            continue
        if qual.endswith("OneCycleLR"):
            per_epoch = kwarg(value, "steps_per_epoch")
            if per_epoch is not None:
                return f"steps_per_epoch={ast.unparse(per_epoch)}"
        keyword, position = _PERIODS[qual]
        period = kwarg(value, keyword)
        if period is None and len(value.args) > position:
            period = value.args[position]
        if period is not None and _counts_batches(period):
            return f"{keyword}={ast.unparse(period)}"
    return None


def _counts_batches(period: ast.expr) -> bool:
    """`len(train_loader) * epochs`, `num_training_steps`, `args.total_iters`."""
    for node in walk_tree(period):
        if isinstance(node, ast.Name | ast.Attribute) and _BATCH_WORDS.search(identifier(node)):
            return True
    return False
