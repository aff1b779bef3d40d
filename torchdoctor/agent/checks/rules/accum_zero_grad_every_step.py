"""accum-zero-grad-every-step: gradients cleared on every micro-batch of an accumulation."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import direct_effects, under_modulo_guard
from torchdoctor.agent.models import Severity


class AccumZeroGradEveryStep(Rule):
    """Detects a training loop that steps the optimizer only on some iterations (under a
    modulo guard, `if (i + 1) % k == 0:`, or after an `if ...: continue` that skips it) but
    calls `zero_grad()` unconditionally on every iteration, before the backward.

    Why it matters: accumulation relies on gradients adding up over the k micro-batches
    between two steps. Clearing them at every iteration throws away all but the last
    micro-batch, so each step sees one micro-batch's gradient: the effective batch is k times
    smaller than configured, and the skipped batches cost compute for nothing.

    Not reported: loops that step on every iteration, a `zero_grad()` under the same guard as
    the step (or right after it), a `zero_grad()` that follows the backward in the body, and a
    skip before the backward (`if not torch.isfinite(loss): continue` drops the whole batch).

    Example:
        for i, (x, y) in enumerate(loader):
            optimizer.zero_grad()
            (criterion(model(x), y) / k).backward()
            if (i + 1) % k != 0:
                continue
            optimizer.step()

    Fix: move `optimizer.zero_grad()` next to `optimizer.step()`, under the same condition.
    """

    id = "accum-zero-grad-every-step"
    point = 4
    severity = Severity.HIGH
    title = "Gradients cleared on every micro-batch of an accumulation"
    items: ClassVar[tuple[str, ...]] = ("4.3",)

    def applies(self, ctx: ModuleContext) -> bool:
        return "zero_grad" in ctx.source and bool(ctx.loops.training_loops)

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        for loop in ctx.loops.training_loops:
            if loop.kind != "loop" or not isinstance(loop.node, ast.For | ast.While):
                continue
            body = loop.node.body
            effects = direct_effects(body)
            if not effects.step or not effects.backward:
                continue
            top = {id(s): i for i, s in enumerate(body)}
            backward_at = min(_position(ctx, b, top) for b in effects.backward)
            skipped = all(
                under_modulo_guard(ctx, s, loop.node)
                or _skip_between(body, backward_at, _position(ctx, s, top))
                for s in effects.step
            )
            if not skipped:
                continue
            for clear in effects.zero_grad:
                at = _position(ctx, clear, top)
                if top.get(id(ctx.parents.get(clear))) is not None and at < backward_at:
                    ctx.report(
                        self,
                        clear,
                        "gradients are cleared on every iteration, but the optimizer steps only "
                        "on some: the accumulated micro-batches are thrown away; clear them next "
                        "to optimizer.step(), under the same condition",
                    )


def _position(ctx: ModuleContext, node: ast.AST, top: dict[int, int]) -> int:
    """The index, in the loop body, of the top-level statement holding `node`."""
    current: ast.AST | None = node
    while current is not None and id(current) not in top:
        current = ctx.parents.get(current)
    return top[id(current)] if current is not None else -1


def _skip_between(body: list[ast.stmt], start: int, end: int) -> bool:
    """A top-level `if ...: continue` after the backward (statement `start`) and before the
    step (statement `end`): the micro-batches it skips only accumulate. A skip before the
    backward (`if not torch.isfinite(loss): continue`) drops the whole batch instead."""
    return any(
        isinstance(stmt, ast.If) and any(isinstance(s, ast.Continue) for s in stmt.body)
        for stmt in body[start + 1 : end]
    )
