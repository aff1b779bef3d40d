"""batch-scheduler-per-epoch: a schedule sized in batches stepped once per epoch."""

from __future__ import annotations

import ast
import re
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from torchdoctor.agent.checks.analysis.project import callee_symbol, module_name
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
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
_RETURNS = "batch-scheduler-per-epoch:returns"
_STEPS = "batch-scheduler-per-epoch:steps"


class ReturnedScheduler(BaseModel):
    """A function returning a batch-sized scheduler (alone or at `position` of a tuple)."""

    model_config = ConfigDict(extra="forbid")
    symbol: str
    position: int | None = None
    period: str


class StepOfImported(BaseModel):
    """A once-per-epoch step of a scheduler another file's function returned."""

    model_config = ConfigDict(extra="forbid")
    symbol: str
    position: int | None = None
    finding: RawFinding


class BatchSchedulerPerEpoch(Rule):
    """Detects `scheduler.step()` called once per epoch (in a loop whose body trains through
    an inner batch loop or a local training function, after that inner loop) on a scheduler
    whose period is counted in batches: a `OneCycleLR` given `steps_per_epoch` or a
    `total_steps` computed from the loader, or a `CosineAnnealingLR` / `StepLR` /
    `MultiStepLR` / `LinearLR` / `PolynomialLR` whose period mentions the loader's length or a
    count of steps or iterations (`T_max=len(train_loader) * epochs`, `num_training_steps`).
    The scheduler may come from a function of another project file that returns it
    (SimCLR's `model, optimizer, scheduler = load_model(args, train_loader)`).

    Why it matters: these schedulers count `step()` calls. Sized for every batch but stepped
    once per epoch, the schedule advances len(loader) times too slowly: a one-cycle warm-up
    never ends, a cosine decay never leaves the maximum learning rate, and training finishes
    with the LR it started with.

    Not reported: steps inside the batch loop, a step after the batch loop of a scheduler
    that is also stepped inside it (the flush of a last, partial gradient accumulation,
    which steps the optimizer and the schedule once more), steps with an argument (`step(epoch)`,
    `step(metric)`), periods written in epochs (`T_max=args.epochs`), schedulers from
    libraries or from another file's classes (their period is not known).

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
        return ".step(" in text and (any(name in text for name in _GATE) or "sched" in text)

    def finish(self, ctx: ModuleContext) -> None:
        if any(name in ctx.source for name in _GATE) and "return" in ctx.source:
            _publish_returns(ctx)
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
            receiver = node.func.value
            if _also_stepped_in_an_inner_loop(ctx, node, loop):
                continue  # per batch already: this step flushes a last partial accumulation
            period = _batch_period(ctx, receiver)
            if period is not None:
                ctx.report(self, node, _message(receiver, period, loop))
                continue
            source = _returned_by_another_file(ctx, receiver)
            found = ctx.finding(self, node, _message(receiver, "{period}", loop))
            if source is not None and found is not None:
                symbol, position = source
                step = StepOfImported(symbol=symbol, position=position, finding=found)
                ctx.facts.setdefault(_STEPS, []).append(step.model_dump())

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        returned = [
            ReturnedScheduler.model_validate(r) for f in facts.values() for r in f.get(_RETURNS, [])
        ]
        found: list[RawFinding] = []
        for module_facts in facts.values():
            for raw in module_facts.get(_STEPS, []):
                step = StepOfImported.model_validate(raw)
                period = next(
                    (
                        r.period
                        for r in returned
                        if r.position == step.position and _same_symbol(step.symbol, r.symbol)
                    ),
                    None,
                )
                if period is not None:
                    message = step.finding.message.replace("{period}", period)
                    found.append(step.finding.model_copy(update={"message": message}))
        return found


def _message(receiver: ast.expr, period: str, loop: ast.For | ast.While) -> str:
    return (
        f"`{ast.unparse(receiver)}` is sized in batches ({period}) but steps once per pass of "
        f"the loop of line {loop.lineno}: the schedule advances len(loader) times too slowly; "
        "step it after every optimizer step"
    )


def _same_symbol(imported: str, defined: str) -> bool:
    """`model.load_model` imported, `model.load_model` or `src.model.load_model` defined."""
    return imported == defined or defined.endswith("." + imported)


def _publish_returns(ctx: ModuleContext) -> None:
    """Record the module's top-level functions that return a batch-sized scheduler
    (`return model, optimizer, scheduler` in SimCLR's `load_model`)."""
    found: list[dict[str, Any]] = []
    for fn in ctx.tree.body:
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in walk_tree(fn):
            if not isinstance(node, ast.Return) or node.value is None:
                continue
            parts = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
            for position, part in enumerate(parts):
                period = _batch_period(ctx, part) if isinstance(part, ast.Name) else None
                if period is not None:
                    entry = ReturnedScheduler(
                        symbol=f"{module_name(ctx.path)}.{fn.name}",
                        position=position if isinstance(node.value, ast.Tuple) else None,
                        period=period,
                    )
                    found.append(entry.model_dump())
    if found:
        ctx.facts[_RETURNS] = found


def _returned_by_another_file(
    ctx: ModuleContext, receiver: ast.expr
) -> tuple[str, int | None] | None:
    """(imported function, tuple position) when `receiver` is bound to what a function of
    another project file returns (`model, optimizer, scheduler = load_model(args, loader)`)."""
    if not isinstance(receiver, ast.Name):
        return None
    for value, position, _ in ctx.flow.unpackings(receiver):
        if isinstance(value, ast.Call):
            symbol = callee_symbol(ctx, value.func)
            if symbol is not None:
                return symbol, position
    for value in ctx.flow.definitions(receiver):
        if isinstance(value, ast.Call):
            symbol = callee_symbol(ctx, value.func)
            if symbol is not None:
                return symbol, None
    return None


def _also_stepped_in_an_inner_loop(
    ctx: ModuleContext, step: ast.Call, loop: ast.For | ast.While
) -> bool:
    """The same scheduler is stepped, without argument, in a loop nested in `loop`: it runs
    per batch, and the step after the inner loop goes with a flush of the optimizer."""
    assert isinstance(step.func, ast.Attribute)
    receiver = ast.unparse(step.func.value)
    for other in ctx.flow.calls_named(("step",)):
        if other is step or other.args or other.keywords:
            continue
        if not isinstance(other.func, ast.Attribute) or ast.unparse(other.func.value) != receiver:
            continue
        inner = _innermost_loop(ctx, other)
        if inner is not None and inner is not loop and any(a is loop for a in ctx.ancestors(inner)):
            return True
    return False


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
