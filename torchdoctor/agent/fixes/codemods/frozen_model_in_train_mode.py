"""frozen-model-in-train-mode: put the frozen network in eval mode where it is built."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class FrozenModelInTrainModeFix(Codemod):
    """Adds `model.eval()` after the statement that last binds the frozen network (the rule
    anchors it: `bound_line`), so the training step runs it with dropout off and batch norm
    on its stored statistics. A network built in several places (two callers passing
    different teachers) is left to a human."""

    rule = "frozen-model-in-train-mode"
    kind = FixKind.CORRECTNESS
    summary = "put the frozen network in eval mode after building it"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        model, line = target.data.get("model"), target.data.get("bound_line")
        if not isinstance(model, str) or not isinstance(line, int):
            return ctx.decline("the network is built in several places: a human's call")
        if ctx.calls_method(ctx.module, model, "eval"):
            return False  # already there (a second pass, or added by hand)
        for stmt in ctx.find(cst.SimpleStatementLine, within=(line, line)):
            if ctx.end_line(stmt) != line or not any(
                isinstance(small, cst.Assign)
                and any(ctx.code(t.target) == model for t in small.targets)
                for small in stmt.body
            ):
                continue
            ctx.insert_after(stmt, f"{model}.eval()\n")
            return True
        return False
