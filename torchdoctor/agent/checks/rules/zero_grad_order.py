"""zero-grad-order: gradients are cleared between backward() and step()."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import direct_effects
from torchdoctor.agent.models import Severity


class ZeroGradOrder(Rule):
    """Detects `zero_grad()` called after `backward()` and before `optimizer.step()` in the
    same training-loop iteration.

    Why it matters: the step then sees empty (or zero) gradients and updates nothing, or only
    applies weight decay; the model does not learn and no error is raised.

    Example:
        loss.backward()
        optimizer.zero_grad()
        optimizer.step()

    Not reported: `p.grad = None` on the parameters a condition selects in a loop over them
    (`if "prototypes" in name: p.grad = None`): those are frozen for this step on purpose
    and the others still update.

    Fix: clear gradients before the forward pass (or right after `step()`):
    `optimizer.zero_grad(set_to_none=True)`, then `loss.backward()`, then `optimizer.step()`.
    """

    id = "zero-grad-order"
    point = 4
    severity = Severity.HIGH
    title = "zero_grad() between backward() and step()"
    items: ClassVar[tuple[str, ...]] = ("4.3",)

    def applies(self, ctx: ModuleContext) -> bool:
        return bool(ctx.loops.training_loops)

    def finish(self, ctx: ModuleContext) -> None:
        if "zero_grad" not in ctx.source and ".grad = None" not in ctx.source:
            return
        for loop in ctx.loops.training_loops:
            effects = direct_effects(loop.body)
            backward_lines = sorted(c.lineno for c in effects.backward)
            step_lines = sorted(c.lineno for c in effects.step)
            for clear in effects.zero_grad:
                line = getattr(clear, "lineno", 0)
                if any(b < line for b in backward_lines) and any(s > line for s in step_lines):
                    if any(s < line for s in step_lines if s > backward_lines[0]):
                        continue  # step() already ran after backward in this iteration
                    if _selected_parameter(ctx, clear):
                        continue  # some parameters frozen for this step, on purpose
                    ctx.report(
                        self,
                        clear,
                        "gradients are cleared after backward() and before step(): "
                        "the optimizer step sees no gradient",
                    )


def _selected_parameter(ctx: ModuleContext, clear: ast.AST) -> bool:
    """`for name, p in model.named_parameters(): if cond: p.grad = None`: the clear hits
    the parameters an `if` inside the loop over them picks, not every gradient."""
    if not isinstance(clear, ast.Assign):
        return False
    cleared = {
        t.value.id
        for t in clear.targets
        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
    }
    selected = False
    for parent in ctx.ancestors(clear):
        if isinstance(parent, ast.If):
            selected = True
        elif isinstance(parent, ast.For | ast.AsyncFor):
            bound = {n.id for n in ast.walk(parent.target) if isinstance(n, ast.Name)}
            if cleared & bound:
                return selected
        elif isinstance(parent, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            break
    return False
