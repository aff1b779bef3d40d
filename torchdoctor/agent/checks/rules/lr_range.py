"""lr-range: a literal learning rate outside the usual range."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.vocabulary import OPTIMIZER_NAMES, OPTIMIZERS
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.patterns import argument, constant_number, terminal_name
from torchdoctor.agent.models import Severity

_LOW, _HIGH = 1e-6, 1.0


class LrRange(Rule):
    """Detects an optimizer built with a literal learning rate above 1 or below 1e-6.
    Opt-in: some schedules start from a tiny value and LBFGS commonly uses lr=1.

    Why it matters: above 1 most networks diverge within a few steps (NaN losses); below 1e-6
    the weights barely move and the run wastes its compute budget looking converged. Both are
    commonly typos (`lr=10` for `1e-1`, `lr=1e-8` for `1e-3`).

    Example:
        optimizer = torch.optim.SGD(model.parameters(), lr=10)

    Fix: check the value (typical: 1e-4..1e-2 for Adam-family, 1e-3..1e-1 for SGD) and run a
    short learning-rate range test to pick it.
    """

    id = "lr-range"
    point = 4
    severity = Severity.MEDIUM
    title = "Learning rate outside the usual range"
    items: ClassVar[tuple[str, ...]] = ("4.3",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    tier = "opt-in"

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if terminal_name(node.func) not in OPTIMIZER_NAMES:
            return
        if not node.args and not node.keywords:
            return
        qual = ctx.call_qualname(node)
        if qual not in OPTIMIZERS or qual == "torch.optim.LBFGS":
            return
        lr = constant_number(argument(node, "lr", 1))
        if lr is not None and lr > 0 and not _LOW <= lr <= _HIGH:
            ctx.report(
                self,
                node,
                f"lr={lr:g} is outside the usual range [{_LOW:g}, {_HIGH:g}]: check for a typo",
            )
