"""module-shallow-copy: `copy.copy(net)` -> `copy.deepcopy(net)`."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class ModuleShallowCopyFix(Codemod):
    """Copies the parameters too, so the copy (a target network, an EMA, a snapshot) keeps
    its own weights. Only the `copy.copy(...)` spelling is edited: a bare `copy` imported
    from the module would need a second name, left to a human."""

    rule = "module-shallow-copy"
    kind = FixKind.CORRECTNESS
    summary = "copy the module with copy.deepcopy"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        for call in ctx.find(cst.Call, within=(target.line, target.end_line)):
            if ctx.qualname(call.func) != "copy.copy":
                continue
            if not isinstance(call.func, cst.Attribute):
                return ctx.decline("`copy` is imported by name: import deepcopy beside it")
            ctx.substitute(call.func.attr, cst.Name("deepcopy"))
            return True
        return False
