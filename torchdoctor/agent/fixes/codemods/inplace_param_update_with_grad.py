"""inplace-param-update-with-grad: run the parameter update under torch.no_grad()."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import EXACT_RTOL, Codemod, SourceContext
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class InplaceParamUpdateWithGradFix(Codemod):
    """Wraps the statement the rule anchored (the `for p in model.parameters()` loop, or the
    update of a `requires_grad=True` tensor) in `with torch.no_grad():`, as `torch.optim`
    does for its own updates. The update's arithmetic is unchanged."""

    rule = "inplace-param-update-with-grad"
    kind = FixKind.CORRECTNESS
    summary = "update parameters in place under torch.no_grad()"
    rtol = EXACT_RTOL

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        line = target.data.get("wrap_line")
        if not isinstance(line, int):
            return False
        found: list[cst.For | cst.SimpleStatementLine] = [
            *ctx.find(cst.For, where=lambda s: ctx.line(s) == line),
            *ctx.find(cst.SimpleStatementLine, where=lambda s: ctx.line(s) == line),
        ]
        if len(found) != 1:
            return False
        statement = found[0]
        torch = ctx.require_module("torch")

        def wrap(node: cst.CSTNode) -> cst.CSTNode:
            if not isinstance(node, cst.For | cst.SimpleStatementLine):
                return node
            return cst.With(
                items=[cst.WithItem(item=cst.parse_expression(f"{torch}.no_grad()"))],
                body=cst.IndentedBlock(body=[node.with_changes(leading_lines=[])]),
                leading_lines=node.leading_lines,
            )

        ctx.replace(statement, wrap)
        return True
