"""amp-clip-without-unscale: gradients clipped while still multiplied by the AMP loss scale."""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import identifier
from torchdoctor.agent.checks.loops import walk_scope
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_CLIP = frozenset(
    {"clip_grad_norm_", "clip_grad_value_", "clip_grad_norm", "clip_grads_with_norm_"}
)


class AmpClipWithoutUnscale(Rule):
    """Detects gradient clipping (`clip_grad_norm_`, `clip_grad_value_`) preceded, on its
    path, by the backward of a `GradScaler`-scaled loss (`scaler.scale(loss).backward()`) but
    not by `scaler.unscale_(optimizer)`, or followed by `scaler.step(optimizer)` in the same
    function (an `update()` method of a trainer whose backward runs elsewhere: the gradients
    that step receives were scaled). Clipping in a branch without AMP is not reported.

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
    triggers = Triggers(("clip_grad",))

    def applies(self, ctx: ModuleContext) -> bool:
        return "clip_grad" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        if "clip_grad" not in ctx.source or ".scale(" not in ctx.source:
            return
        for call in ctx.flow.calls_named(_CLIP):
            scaled = _preceded_by(ctx, call, _is_scaled_backward) or _followed_by(
                ctx, call, _is_scaler_step
            )
            if scaled and not _preceded_by(ctx, call, _is_unscale):
                ctx.report(
                    self,
                    call,
                    "gradients are clipped while still scaled by the GradScaler: call "
                    "scaler.unscale_(optimizer) before clipping",
                    data=_scaler_step(ctx, call),
                )


def _preceded_by(ctx: ModuleContext, node: ast.AST, predicate: Callable[[ast.Call], bool]) -> bool:
    """Whether a statement that runs before `node` on every path to it (an earlier sibling
    of `node` or of one of its enclosing statements, within its function) makes such a call."""
    return _sibling_calls(ctx, node, predicate, later=False)


def _followed_by(ctx: ModuleContext, node: ast.AST, predicate: Callable[[ast.Call], bool]) -> bool:
    """Whether a later sibling of `node` or of an enclosing statement, within its function,
    makes such a call."""
    return _sibling_calls(ctx, node, predicate, later=True)


def _sibling_calls(
    ctx: ModuleContext, node: ast.AST, predicate: Callable[[ast.Call], bool], later: bool
) -> bool:
    current = node
    for parent in ctx.ancestors(node):
        for field in ("body", "orelse", "finalbody"):
            block = getattr(parent, field, None)
            if isinstance(block, list) and current in block:
                index = block.index(current)
                siblings = block[index + 1 :] if later else block[:index]
                if any(isinstance(n, ast.Call) and predicate(n) for n in walk_scope(siblings)):
                    return True
        if isinstance(parent, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return False
        current = parent
    return False


def _scaler_step(ctx: ModuleContext, clip: ast.Call) -> dict[str, str]:
    """The scaler and the optimizer of the one `scaler.step(optimizer)` after the clipping in
    its function (what `unscale_` needs), or nothing when there is not exactly one."""
    scope = ctx.enclosing_function(clip)
    steps = [
        call
        for call in ctx.flow.calls_named(("step",))
        if _is_scaler_step(call)
        and len(call.args) == 1
        and ctx.enclosing_function(call) is scope
        and (call.lineno, call.col_offset) > (clip.lineno, clip.col_offset)
    ]
    if len({(ast.unparse(s.func), ast.unparse(s.args[0])) for s in steps}) != 1:
        return {}
    step = steps[0]
    assert isinstance(step.func, ast.Attribute)
    return {"scaler": ast.unparse(step.func.value), "optimizer": ast.unparse(step.args[0])}


def _is_scaler_step(call: ast.Call) -> bool:
    """`scaler.step(optimizer)`: the gradients it receives were scaled by that scaler."""
    func = call.func
    return (
        isinstance(func, ast.Attribute)
        and func.attr == "step"
        and "scaler" in identifier(func.value).lower()
    )


def _is_unscale(call: ast.Call) -> bool:
    return identifier(call.func) == "unscale_"


def _is_scaled_backward(call: ast.Call) -> bool:
    func = call.func
    return (
        isinstance(func, ast.Attribute)
        and func.attr == "backward"
        and isinstance(func.value, ast.Call)
        and identifier(func.value.func) == "scale"
    )
