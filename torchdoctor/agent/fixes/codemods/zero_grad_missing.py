"""zero-grad-missing: clear gradients at the top of every training iteration."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import (
    Codemod,
    SourceContext,
    dotted_name,
    line_statement,
    method_call,
    not_parsed,
    scope_of,
)
from torchdoctor.agent.fixes.codemods.common import flagged_loop, optimizer_steps
from torchdoctor.agent.fixes.models import FixKind, FixTarget, SmokeRun


class ZeroGradMissingFix(Codemod):
    rule = "zero-grad-missing"
    kind = FixKind.CORRECTNESS
    summary = "call optimizer.zero_grad(set_to_none=True) at the top of the training loop body"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        plan = _plan(ctx, target)
        if isinstance(plan, str):
            return False
        anchor, optimizer = plan
        ctx.insert_before(anchor, f"{optimizer}.zero_grad(set_to_none=True)\n")
        return True

    def explain(self, source: str, target: FixTarget) -> str | None:
        try:
            ctx = SourceContext(source)
        except (cst.ParserSyntaxError, RecursionError) as exc:
            return not_parsed(source, exc)
        plan = _plan(ctx, target)
        return plan if isinstance(plan, str) else None

    def symptom_gone(self, before: SmokeRun, after: SmokeRun) -> tuple[bool, str]:
        """Accumulated gradients grow step after step; cleared ones stay at one step's size."""
        grown = _last_norm(before)
        cleared = _last_norm(after)
        if grown is None or cleared is None:
            return super().symptom_gone(before, after)
        ok = cleared < grown
        return ok, f"last gradient norm {grown:.3g} before the fix, {cleared:.3g} after"


def _plan(ctx: SourceContext, target: FixTarget) -> tuple[cst.CSTNode, str] | str:
    """(the statement to clear the gradients before, the optimizer), or why there is none:
    the top of the flagged loop's body, or, when the loop trains through a step function
    (pyGAT's `train(epoch)` called once an epoch), that function's one backward()."""
    loop = flagged_loop(ctx, target)
    if loop is None or not isinstance(loop.body, cst.IndentedBlock):
        return _in_the_step_function(ctx, target)
    cleared = [c for c in ctx.find(cst.Call, inside=loop.body) if method_call(c, "zero_grad")]
    if cleared:
        return (
            f"the loop already calls `{ctx.code(cleared[0].func)}()` on another path: the "
            "path without it may clear gradients another way (a DeepSpeed engine's step() "
            "does); add zero_grad() there by hand if it does not"
        )
    receivers = {
        dotted_name(step.func.value)
        for step in optimizer_steps(ctx, loop.body)
        if isinstance(step.func, cst.Attribute)
    }
    if len(receivers) != 1:
        return (
            "the loop steps no optimizer this fix can name, or several: clear each one's "
            "gradients before its backward by hand"
        )
    optimizer = receivers.pop()
    if optimizer is None:
        return "the loop steps an optimizer this fix cannot name: clear its gradients by hand"
    return loop.body.body[0], optimizer


def _in_the_step_function(ctx: SourceContext, target: FixTarget) -> tuple[cst.CSTNode, str] | str:
    """Before the backward() the rule names (`backward_line`), when it is the only one of its
    function and that function steps one optimizer: clearing right before the backward
    drops the previous call's gradients and nothing of this one's."""
    line = target.data.get("backward_line")
    backward = line_statement(ctx, line) if isinstance(line, int) else None
    function = scope_of(ctx, backward) if backward is not None else None
    if backward is None or not isinstance(function, cst.FunctionDef):
        return "no training loop this fix can follow at the finding"
    backwards = [c for c in ctx.find(cst.Call, inside=function) if method_call(c, "backward")]
    receivers = {
        dotted_name(step.func.value)
        for step in optimizer_steps(ctx, function)
        if isinstance(step.func, cst.Attribute)
    }
    if len(backwards) != 1 or len(receivers) != 1 or None in receivers:
        return (
            f"`{function.name.value}` runs several backward() calls or steps no single named "
            "optimizer: clear each optimizer's gradients before its backward by hand"
        )
    optimizer = receivers.pop()
    assert optimizer is not None
    return backward, optimizer


def _last_norm(run: SmokeRun) -> float | None:
    norms = run.signals.grad_norms
    return float(norms[-1]) if norms else None
