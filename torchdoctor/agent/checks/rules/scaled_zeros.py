"""scaled-zeros: a value multiplied by a tensor of zeros, always zero (ones meant)."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import terminal_name
from torchdoctor.agent.models import Severity

_ZEROS = frozenset({"torch.zeros", "torch.zeros_like", "numpy.zeros", "numpy.zeros_like"})


class ScaledZeros(Rule):
    """Detects a value multiplied by a freshly made array of zeros (`torch.zeros`,
    `torch.zeros_like`, `x.new_zeros`, `np.zeros`): `nn.Parameter(np.log(init_scale) *
    torch.zeros(1, *dims))`, `gamma = init_value * torch.zeros(dim)`.

    Why it matters: the product is zero whatever the value, so the value is silently thrown
    away: an initial scale, a layer-scale `init_values`, a bias fill never reaches the model,
    which starts from zeros (a log-scale of 0, a residual branch switched off). The idiom the
    code copies is `value * torch.ones(...)` (or `torch.full(shape, value)`).
    vislearn/FrEIA fixed exactly this (`4333294`: `LearnedElementwiseScaling`'s
    `np.log(init_scale) * torch.zeros(1, *dims_in[0])` -> `torch.ones`).

    Not reported: products with `torch.ones`/`torch.full`, zeros added or assigned, zeros
    multiplied by a literal number (0 * zeros and the like say nothing about intent).

    Example:
        self.s = nn.Parameter(np.log(init_scale) * torch.zeros(1, *dims_in[0]))

    Fix: `np.log(init_scale) * torch.ones(1, *dims_in[0])`, or `torch.full((1, *dims_in[0]),
    np.log(init_scale))`.
    """

    id = "scaled-zeros"
    point = 4
    severity = Severity.HIGH
    title = "Value multiplied by zeros"
    items: ClassVar[tuple[str, ...]] = ("4.3",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.BinOp,)
    triggers = Triggers(("zeros",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.BinOp)
        if not isinstance(node.op, ast.Mult):
            return
        for zeros, other in ((node.right, node.left), (node.left, node.right)):
            if _is_zeros(ctx, zeros) and not isinstance(other, ast.Constant):
                ctx.report(
                    self,
                    node,
                    f"`{ast.unparse(other)}` is multiplied by `{ast.unparse(zeros)}`: the "
                    "product is zero whatever the value, so the value is thrown away. "
                    "Multiply by ones (or use `torch.full(shape, value)`).",
                )
                return


def _is_zeros(ctx: ModuleContext, expr: ast.expr) -> bool:
    if not isinstance(expr, ast.Call):
        return False
    if (ctx.call_qualname(expr) or "") in _ZEROS:
        return True
    return isinstance(expr.func, ast.Attribute) and terminal_name(expr.func) == "new_zeros"
