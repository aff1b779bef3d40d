"""flatten-view-of-transposed: `t.view(-1)` of a non-contiguous tensor -> `t.reshape(-1)`."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class FlattenViewOfTransposedFix(Codemod):
    """`reshape(-1)` returns the same values as `view(-1)` wherever the view works, and copies
    where it would raise (a transposed tensor, or a comparison's result laid out like one)."""

    rule = "flatten-view-of-transposed"
    kind = FixKind.CORRECTNESS
    summary = "flatten with reshape(-1), which copies a non-contiguous tensor"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        for call in ctx.find(cst.Call, within=(target.line, target.line)):
            func = call.func
            if (
                isinstance(func, cst.Attribute)
                and func.attr.value == "view"
                and len(call.args) == 1
                and call.args[0].keyword is None
                and _minus_one(call.args[0].value)
            ):
                ctx.substitute(func.attr, cst.Name("reshape"))
                return True
        return False


def _minus_one(expr: cst.BaseExpression) -> bool:
    return (
        isinstance(expr, cst.UnaryOperation)
        and isinstance(expr.operator, cst.Minus)
        and isinstance(expr.expression, cst.Integer)
        and expr.expression.value == "1"
    )
