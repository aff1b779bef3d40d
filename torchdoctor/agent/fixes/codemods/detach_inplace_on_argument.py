"""detach-inplace-on-argument: `x.detach_()` -> `x = x.detach()`."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class DetachInplaceOnArgumentFix(Codemod):
    """Detaches a new tensor under the argument's name instead of the caller's tensor: the
    function sees the same values without a graph, the caller keeps its graph."""

    rule = "detach-inplace-on-argument"
    kind = FixKind.CORRECTNESS
    summary = "detach a copy (x = x.detach()) instead of the caller's tensor"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        name = target.data.get("name")
        if not isinstance(name, str):
            return False
        for stmt in ctx.find(cst.Expr, within=(target.line, target.end_line)):
            call = stmt.value
            if not (
                isinstance(call, cst.Call)
                and not call.args
                and isinstance(call.func, cst.Attribute)
                and call.func.attr.value == "detach_"
                and isinstance(call.func.value, cst.Name)
                and call.func.value.value == name
            ):
                continue
            detached = cst.parse_expression(f"{name}.detach()")
            assign = cst.Assign(targets=[cst.AssignTarget(target=cst.Name(name))], value=detached)
            ctx.substitute(stmt, assign)
            return True
        return False
