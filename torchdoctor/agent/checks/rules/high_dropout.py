"""high-dropout: a dropout probability above one half."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.patterns import argument, constant_number, terminal_name
from torchdoctor.agent.models import Severity

_DROPOUTS = frozenset(
    {
        "torch.nn.Dropout",
        "torch.nn.Dropout1d",
        "torch.nn.Dropout2d",
        "torch.nn.Dropout3d",
        "torch.nn.AlphaDropout",
        "torch.nn.functional.dropout",
    }
)


class HighDropout(Rule):
    """Detects a dropout layer or call with a literal probability above 0.5
    (`nn.Dropout(0.8)`, `F.dropout(x, p=0.7)`). Opt-in: some regularisation recipes use it
    on purpose.

    Why it matters: `p` is the probability of dropping a unit, not of keeping it (a common
    confusion with TensorFlow 1's `keep_prob`); above 0.5 most of the signal is discarded,
    the network underfits and converges slowly.

    Example:
        self.drop = nn.Dropout(0.8)

    Fix: check the intent; typical values are 0.1-0.5 (`nn.Dropout(0.2)` to keep 80%).
    """

    id = "high-dropout"
    point = 4
    severity = Severity.LOW
    title = "Dropout probability above 0.5"
    items: ClassVar[tuple[str, ...]] = ("4.3",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    tier = "opt-in"

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if "ropout" not in terminal_name(node.func):
            return
        qual = ctx.call_qualname(node)
        if qual not in _DROPOUTS:
            return
        position = 1 if qual == "torch.nn.functional.dropout" else 0
        p = constant_number(argument(node, "p", position))
        if p is not None and p > 0.5:
            ctx.report(
                self,
                node,
                f"dropout drops {p:.0%} of the units (p is the drop probability, not the keep "
                "probability)",
            )
