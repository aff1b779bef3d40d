"""amp-clip-without-unscale: gradients clipped while still multiplied by the AMP loss scale."""

from __future__ import annotations

import ast
from typing import ClassVar

from agent.checks.base import ModuleContext, Rule
from agent.checks.dataflow import identifier, module_level
from agent.checks.loops import walk_scope
from agent.models import Severity

_CLIP = frozenset(
    {"clip_grad_norm_", "clip_grad_value_", "clip_grad_norm", "clip_grads_with_norm_"}
)


class AmpClipWithoutUnscale(Rule):
    """Detects gradient clipping (`clip_grad_norm_`, `clip_grad_value_`) in a function that
    back-propagates a `GradScaler`-scaled loss (`scaler.scale(loss).backward()`) but never
    calls `scaler.unscale_(optimizer)`.

    Why it matters: with AMP the gradients are multiplied by the loss scale (65536 by
    default) until `scaler.step` unscales them. Clipping the scaled gradients to a norm of
    1.0 divides the real update by about the scale factor: training silently crawls.

    Example:
        scaler.scale(loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)

    Fix: call `scaler.unscale_(optimizer)` right before clipping.
    """

    id = "amp-clip-without-unscale"
    point = 2
    severity = Severity.HIGH
    title = "Gradient clipping on AMP-scaled gradients"
    items: ClassVar[tuple[str, ...]] = ("2.3",)
    fixable = True

    def applies(self, ctx: ModuleContext) -> bool:
        return "clip_grad" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        if "clip_grad" not in ctx.source or ".scale(" not in ctx.source:
            return
        flow = ctx.flow
        for defs in flow.functions.values():
            for fn in defs:
                self._check(ctx, fn.body)
        self._check(ctx, module_level(ctx.tree))

    def _check(self, ctx: ModuleContext, body: list[ast.stmt]) -> None:
        calls = [n for n in walk_scope(body) if isinstance(n, ast.Call)]
        if not any(_is_scaled_backward(c) for c in calls):
            return
        if any(identifier(c.func) == "unscale_" for c in calls):
            return
        for call in calls:
            if identifier(call.func) in _CLIP:
                ctx.report(
                    self,
                    call,
                    "gradients are clipped while still scaled by the GradScaler: call "
                    "scaler.unscale_(optimizer) before clipping",
                )


def _is_scaled_backward(call: ast.Call) -> bool:
    func = call.func
    return (
        isinstance(func, ast.Attribute)
        and func.attr == "backward"
        and isinstance(func.value, ast.Call)
        and identifier(func.value.func) == "scale"
    )
