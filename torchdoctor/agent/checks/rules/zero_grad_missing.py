"""zero-grad-missing: a training loop never clears gradients."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.models import Severity


class ZeroGradMissing(Rule):
    """Detects a training loop that calls `backward()` and `optimizer.step()` but never
    `zero_grad()` (nor sets `p.grad = None`), directly or through the functions it calls.

    Why it matters: gradients accumulate across iterations, so every step applies the sum of
    all previous gradients; training diverges or silently follows the wrong direction.
    Gradient accumulation that zeroes every k steps is fine and is not reported.

    Example:
        for x, y in loader:
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()

    Fix: call `optimizer.zero_grad(set_to_none=True)` at the top of each iteration (or after
    each `step()` when accumulating).
    """

    id = "zero-grad-missing"
    point = 4
    severity = Severity.HIGH
    title = "Gradients are never cleared in the training loop"
    items: ClassVar[tuple[str, ...]] = ("4.3",)

    def applies(self, ctx: ModuleContext) -> bool:
        return any(loop.kind == "loop" for loop in ctx.loops.training_loops)

    def finish(self, ctx: ModuleContext) -> None:
        for loop in ctx.loops.training_loops:
            if loop.kind != "loop" or loop.effects.zero_grad:
                continue
            node: ast.AST = loop.node
            ctx.report(
                self,
                node,
                "this loop calls backward() and step() but never zero_grad(): "
                "gradients accumulate across iterations",
                data={"backward_line": loop.effects.backward[0].lineno},
                header_only=True,
            )
