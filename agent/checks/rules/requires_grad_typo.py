"""requires-grad-typo: `x.require_grad = ...` silently sets an unused attribute."""

from __future__ import annotations

import ast
from typing import ClassVar

from agent.checks.base import ModuleContext, Rule
from agent.models import Severity


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
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Assign, ast.AugAssign, ast.AnnAssign)
    fixable = True

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            for sub in ast.walk(target):
                if isinstance(sub, ast.Attribute) and sub.attr == "require_grad":
                    ctx.report(
                        self,
                        node,
                        "`require_grad` is a typo for `requires_grad`: this assignment changes "
                        "nothing about gradients",
                    )
                    return
