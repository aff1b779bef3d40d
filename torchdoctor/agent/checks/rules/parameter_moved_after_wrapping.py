"""parameter-moved-after-wrapping: `nn.Parameter(t).to(device)` is no longer a Parameter."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_PARAMETER = frozenset({"torch.nn.Parameter", "torch.nn.parameter.Parameter"})
# Methods that return a new tensor whenever they move or cast: `.float()` and `.cpu()` are
# left out (on a float CPU tensor, where parameters start, they return the Parameter itself).
_MOVES = frozenset({"to", "cuda", "double", "half", "bfloat16", "type"})
# Parents that consume the moved tensor on the spot: nothing keeps it, so nothing was meant to
# be registered (`x + nn.Parameter(pe, requires_grad=False).to(device)` in a forward()).
_CONSUMED = (ast.BinOp, ast.UnaryOp, ast.Compare)


class ParameterMovedAfterWrapping(Rule):
    """Detects a parameter wrapped first and moved or cast afterwards:
    `nn.Parameter(t).to(device)`, `nn.Parameter(t, requires_grad=False).cuda()`,
    `nn.Parameter(t).double()` (the call on the Parameter itself, in one chain).

    Why it matters: `.to()`/`.cuda()`/a cast return a new tensor whenever the device or dtype
    changes, and that tensor is a plain one, the output of a copy: assigned to a module
    attribute it is not registered, so it is missing from `parameters()` and `state_dict()`
    (a running mean kept as a frozen parameter is never saved), the optimizer never sees it
    (or refuses a non-leaf tensor), and `model.to()` does not move it. On a CPU run the move
    is a no-op that returns the Parameter itself, so the bug only shows on the GPU.

    Not reported: a moved copy consumed on the spot by arithmetic (`x + nn.Parameter(pe,
    requires_grad=False).to(device)` in forward(): no attribute keeps it, the sum is right),
    the data moved before wrapping (`nn.Parameter(t.to(device))`), moves of a
    registered parameter through the module (`model.to(device)`), and `.float()`/`.cpu()`,
    which return the Parameter itself for the float CPU tensors parameters are built from.

    Example:
        self.running_mean = nn.Parameter(torch.zeros(n), requires_grad=False).to(device)

    Fix: move the data, then wrap it: `nn.Parameter(torch.zeros(n).to(device),
    requires_grad=False)`, or wrap it on the CPU and move the whole module.
    """

    id = "parameter-moved-after-wrapping"
    point = 1
    severity = Severity.HIGH
    title = "Parameter moved or cast after it was wrapped"
    items: ClassVar[tuple[str, ...]] = ("1.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = _MOVES
    triggers = Triggers(("Parameter(",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        func = node.func
        if not (
            isinstance(func, ast.Attribute)
            and func.attr in _MOVES
            and isinstance(func.value, ast.Call)
            and ctx.flow.qualname_of(func.value) in _PARAMETER
            and func.value.args
        ):
            return
        if isinstance(ctx.parents.get(node), _CONSUMED):
            return
        wrapped = ast.unparse(func.value.func)
        ctx.report(
            self,
            node,
            f"`{wrapped}(...).{func.attr}(...)` returns a plain tensor whenever it moves or "
            "casts: the module does not register it (missing from parameters() and "
            "state_dict(), not trained, not moved by model.to()); move the data first: "
            f"`{wrapped}(t.{func.attr}(...))`",
            data={"method": func.attr},
        )
