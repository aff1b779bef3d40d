"""scheduler-before-optimizer: the LR scheduler steps before the optimizer."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import (
    direct_effects,
    is_scheduler_receiver,
    method_name,
    receiver_name,
    walk_scope,
)
from torchdoctor.agent.models import Severity


def is_scheduler_step(ctx: ModuleContext, call: ast.Call) -> bool:
    if method_name(call) != "step" or not isinstance(call.func, ast.Attribute):
        return False
    if is_scheduler_receiver(receiver_name(call)):
        return True
    built = ctx.flow.constructed_as(call.func.value) or ""
    return built.startswith("torch.optim.lr_scheduler.")


class SchedulerBeforeOptimizer(Rule):
    """Detects `scheduler.step()` placed before `optimizer.step()` within a training iteration,
    or at the top of the epoch loop before the batches are trained.

    Why it matters: since PyTorch 1.1 the scheduler must step after the optimizer; stepping it
    first skips the first value of the learning-rate schedule (warm-up starts late, a step
    decay comes one epoch early) and PyTorch only warns once.

    Example:
        for epoch in range(epochs):
            scheduler.step()
            for x, y in loader:
                ...
                optimizer.step()

    Fix: call `scheduler.step()` after `optimizer.step()` (per batch) or after the inner
    batch loop (per epoch).
    """

    id = "scheduler-before-optimizer"
    point = 4
    severity = Severity.MEDIUM
    title = "LR scheduler stepped before the optimizer"
    items: ClassVar[tuple[str, ...]] = ("4.3",)

    def applies(self, ctx: ModuleContext) -> bool:
        return bool(ctx.loops.training_loops) and "sched" in ctx.source.lower()

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        reported: set[int] = set()
        for loop in ctx.loops.training_loops:
            if loop.kind != "loop":
                continue
            first_step = min(
                (c.lineno for c in direct_effects(loop.body).step if not is_scheduler_step(ctx, c)),
                default=None,
            )
            early = [
                c
                for c in _steps_in(ctx, loop.body)
                if first_step is not None and c.lineno < first_step
            ]
            outer = next(
                (a for a in ctx.ancestors(loop.node) if isinstance(a, ast.For | ast.While)), None
            )
            if outer is not None:
                early += [c for c in _steps_in(ctx, outer.body) if c.lineno < loop.node.lineno]
            for call in early:
                if call.lineno not in reported:
                    reported.add(call.lineno)
                    ctx.report(
                        self,
                        call,
                        "the LR scheduler steps before optimizer.step(): the first value of "
                        "the schedule is skipped",
                    )


def _steps_in(ctx: ModuleContext, body: list[ast.stmt]) -> list[ast.Call]:
    return [n for n in walk_scope(body) if isinstance(n, ast.Call) and is_scheduler_step(ctx, n)]
