"""zero-grad-set-to-none-false: gradients are zero-filled instead of released."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import is_false, kwarg
from torchdoctor.agent.models import Severity


class ZeroGradSetToNoneFalse(Rule):
    """Detects `zero_grad(set_to_none=False)` (or `zero_grad(False)`).

    Why it matters: filling every gradient with zeros launches a memset kernel per parameter
    each step and keeps the gradient memory allocated between steps; setting them to None
    (the default since PyTorch 2.0) skips both, and the next backward writes instead of
    accumulating.

    Example:
        optimizer.zero_grad(set_to_none=False)

    Fix: `optimizer.zero_grad()` (or `set_to_none=True`), unless code reads `p.grad` between
    steps and expects a zero tensor rather than None.
    """

    id = "zero-grad-set-to-none-false"
    point = 6
    severity = Severity.LOW
    title = "zero_grad(set_to_none=False)"
    items: ClassVar[tuple[str, ...]] = ("6.7",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset({"zero_grad"})
    triggers = Triggers(("zero_grad",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if not isinstance(node.func, ast.Attribute) or node.func.attr != "zero_grad":
            return
        flag = kwarg(node, "set_to_none") or (node.args[0] if node.args else None)
        if flag is not None and is_false(flag):
            ctx.report(
                self,
                node,
                "set_to_none=False zero-fills every gradient each step: an extra kernel per "
                "parameter and memory that could be released",
            )
