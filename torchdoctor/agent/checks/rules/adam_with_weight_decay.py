"""adam-with-weight-decay: L2 penalty through Adam instead of decoupled AdamW."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import argument, constant_number, terminal_name
from torchdoctor.agent.models import Severity

_ADAM = frozenset({"torch.optim.Adam", "torch.optim.adam.Adam"})


class AdamWithWeightDecay(Rule):
    """Detects `torch.optim.Adam(..., weight_decay=w)` with a non-zero `w`.

    Why it matters: Adam adds the decay to the gradient, so it is divided by the adaptive
    second-moment estimate: parameters with large gradients are barely regularised and the
    decay interacts with the learning rate. AdamW applies decoupled weight decay, which is what
    almost every recipe that quotes a weight decay with Adam means (Loshchilov & Hutter).

    Example:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-2)

    Fix: `torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)`; re-tune the
    decay, since the two are not numerically equivalent.
    """

    id = "adam-with-weight-decay"
    point = 4
    severity = Severity.LOW
    title = "Adam with weight decay (use AdamW)"
    items: ClassVar[tuple[str, ...]] = ("4.3",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset({"Adam"})
    triggers = Triggers(("Adam",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if terminal_name(node.func) not in ("Adam",):
            return
        if not node.keywords and len(node.args) < 5:
            return
        if ctx.call_qualname(node) not in _ADAM:
            return
        decay = argument(node, "weight_decay", 4)
        if decay is None or constant_number(decay) == 0:
            return
        ctx.report(
            self,
            node,
            "Adam couples weight decay with the adaptive step (an L2 penalty, not weight "
            "decay): use AdamW",
        )
