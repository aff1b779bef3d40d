"""synchronize-in-step: drop the per-step device synchronisation."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import (
    EXACT_RTOL,
    Codemod,
    SourceContext,
    enclosing_body,
)
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class SynchronizeInStepFix(Codemod):
    """Deletes the flagged `torch.cuda.synchronize()` when it is a statement of its own
    (`standalone` in the finding) and not the only statement of its block. Kernels on one
    stream stay ordered, so results do not change."""

    rule = "synchronize-in-step"
    kind = FixKind.PERFORMANCE
    summary = "remove torch.cuda.synchronize() from the training step"
    rtol = EXACT_RTOL

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        if not target.data.get("standalone"):
            return False
        lines = ctx.find(
            cst.SimpleStatementLine,
            where=lambda s: ctx.line(s) == target.line and len(s.body) == 1,
        )
        if len(lines) != 1:
            return False
        statement = lines[0]
        expr = statement.body[0]
        if not isinstance(expr, cst.Expr) or not isinstance(expr.value, cst.Call):
            return False
        if not (ctx.qualname(expr.value.func) or "").endswith(".synchronize"):
            return False
        body = enclosing_body(ctx, statement)
        if body is None or len(body) < 2:
            return False
        ctx.remove(statement)
        return True
