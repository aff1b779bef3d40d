"""tensor-move-discarded: `x.to(device)` as a statement -> `x = x.to(device)`."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class TensorMoveDiscardedFix(Codemod):
    """Keeps the moved copy under the receiver's name, for the statement form the rule found
    (`x.to(b.device)` -> `x = x.to(b.device)`). A loop variable rebound to its moved copy is
    left to a human: where the tensor belongs in the container is the author's choice."""

    rule = "tensor-move-discarded"
    kind = FixKind.CORRECTNESS
    summary = "assign the moved tensor back to its name"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        name = target.data.get("name")
        if not target.data.get("statement") or not isinstance(name, str):
            return ctx.decline("the moved tensor belongs back in its container: a human's call")
        for stmt in ctx.find(cst.Expr, within=(target.line, target.end_line)):
            call = stmt.value
            if not (
                isinstance(call, cst.Call)
                and isinstance(call.func, cst.Attribute)
                and isinstance(call.func.value, cst.Name)
                and call.func.value.value == name
            ):
                continue
            assign = cst.Assign(targets=[cst.AssignTarget(target=cst.Name(name))], value=call)
            ctx.substitute(stmt, assign)
            return True
        return False
