"""zero-grad-order: clear the gradients right after the optimizer's step."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext, line_statement
from torchdoctor.agent.fixes.models import FixKind, FixTarget, SmokeRun


class ZeroGradOrderFix(Codemod):
    """Moves the flagged `zero_grad()` statement to right after the optimizer step the rule
    names (`step_line`): a clear between `backward()` and `step()` then runs once the step
    has used the gradients, and under gradient accumulation the clear joins the periodic
    step inside its `if`, so the micro-batches' gradients add up until the step. Declines
    when the clear or the step shares its line, or when they sit in different loops or
    functions (moving the clear would change how often it runs)."""

    rule = "zero-grad-order"
    kind = FixKind.CORRECTNESS
    summary = "clear gradients right after optimizer.step()"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        step_line = target.data.get("step_line")
        if not isinstance(step_line, int):
            return ctx.decline("the rule did not locate the optimizer step this clear precedes")
        clear = line_statement(ctx, target.line)
        step = line_statement(ctx, step_line)
        if clear is None or step is None:
            return ctx.decline("the clear or the optimizer step shares its line with other code")
        if not _clears(ctx.code(clear)) or ".step(" not in ctx.code(step):
            return ctx.decline("the lines named are no longer a gradient clear and a step")
        if _loop_of(ctx, clear) is not _loop_of(ctx, step):
            return ctx.decline(
                f"the clear and the optimizer step (line {step_line}) are in different loops: "
                "moving the clear would change how often it runs"
            )
        ctx.remove(clear)  # its comment lines travel with it
        ctx.insert_after(step, [clear])
        return True

    def symptom_gone(self, before: SmokeRun, after: SmokeRun) -> tuple[bool, str]:
        """The probes measure the gradient each optimizer step sees: none (or zero) when it
        was cleared before the step, one micro-batch's when accumulation was cut short."""
        was, now = _step_norms(before), _step_norms(after)
        if not now:
            return False, "the fixed run's optimizer steps saw no gradient either"
        if max(was, default=0.0) == 0.0:
            return max(now) > 0.0, (
                f"the optimizer steps saw no gradient before the fix; norm {now[-1]:.3g} after"
            )
        mean_was, mean_now = sum(was) / len(was), sum(now) / len(now)
        return mean_now > mean_was, (
            f"mean gradient norm at the step {mean_was:.3g} before the fix, {mean_now:.3g} "
            "after (the micro-batches now add up)"
        )


def _step_norms(run: SmokeRun) -> list[float]:
    return run.signals.grad_norms


def _clears(code: str) -> bool:
    return "zero_grad(" in code or ".grad = None" in code


def _loop_of(ctx: SourceContext, node: cst.CSTNode) -> cst.CSTNode | None:
    """The innermost loop or function around `node`."""
    for ancestor in ctx.ancestors(node):
        if isinstance(ancestor, cst.For | cst.While | cst.FunctionDef | cst.Lambda):
            return ancestor
    return None
