"""zero-grad-missing: clear gradients at the top of every training iteration."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext, dotted_name, method_call
from torchdoctor.agent.fixes.codemods.common import flagged_loop, optimizer_steps
from torchdoctor.agent.fixes.models import FixKind, FixTarget, SmokeRun


class ZeroGradMissingFix(Codemod):
    rule = "zero-grad-missing"
    kind = FixKind.CORRECTNESS
    summary = "call optimizer.zero_grad(set_to_none=True) at the top of the training loop body"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        loop = flagged_loop(ctx, target)
        if loop is None or not isinstance(loop.body, cst.IndentedBlock):
            return False
        if any(method_call(c, "zero_grad") for c in ctx.find(cst.Call, inside=loop.body)):
            return False
        receivers = {
            dotted_name(step.func.value)
            for step in optimizer_steps(ctx, loop.body)
            if isinstance(step.func, cst.Attribute)
        }
        if len(receivers) != 1:
            return False
        optimizer = receivers.pop()
        ctx.insert_before(loop.body.body[0], f"{optimizer}.zero_grad(set_to_none=True)\n")
        return True

    def symptom_gone(self, before: SmokeRun, after: SmokeRun) -> tuple[bool, str]:
        """Accumulated gradients grow step after step; cleared ones stay at one step's size."""
        grown = _last_norm(before)
        cleared = _last_norm(after)
        if grown is None or cleared is None:
            return super().symptom_gone(before, after)
        ok = cleared < grown
        return ok, f"last gradient norm {grown:.3g} before the fix, {cleared:.3g} after"


def _last_norm(run: SmokeRun) -> float | None:
    norms = [n for n in run.signals.get("grad_norms", []) if isinstance(n, int | float)]
    return float(norms[-1]) if norms else None
