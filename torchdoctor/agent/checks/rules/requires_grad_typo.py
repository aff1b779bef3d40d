"""requires-grad-typo: `x.require_grad = ...` silently sets an unused attribute."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.models import Severity


class RequiresGradTypo(Rule):
    """Detects an assignment to `.require_grad` (missing "s"), e.g. when freezing layers.

    Why it matters: tensors and parameters accept any new attribute, so the typo raises
    nothing: the parameters stay trainable (or frozen), and fine-tuning silently updates the
    layers it meant to freeze.

    Example:
        for p in backbone.parameters():
            p.require_grad = False

    Fix: `p.requires_grad = False` (or `backbone.requires_grad_(False)`).
    """

    id = "requires-grad-typo"
    point = 1
    severity = Severity.HIGH
    title = "require_grad typo"
    items: ClassVar[tuple[str, ...]] = ("1.1",)

    def applies(self, ctx: ModuleContext) -> bool:
        return "grad" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        if "require_grad" not in ctx.source:
            return
        for attribute in ctx.flow.nodes(ast.Attribute):
            if attribute.attr == "require_grad" and isinstance(attribute.ctx, ast.Store):
                statement = ctx.parents.get(attribute, attribute)
                ctx.report(
                    self,
                    statement,
                    "`require_grad` is a typo for `requires_grad`: this assignment changes "
                    "nothing about gradients",
                )
