"""requires-grad-typo: `p.require_grad = False` -> `p.requires_grad = False`."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class RequiresGradTypoFix(Codemod):
    """Spells the attribute autograd reads: the assignment then freezes (or unfreezes) the
    parameters it was written for."""

    rule = "requires-grad-typo"
    kind = FixKind.CORRECTNESS
    summary = "spell requires_grad"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        for attribute in ctx.find(cst.Attribute, within=(target.line, target.end_line)):
            if attribute.attr.value == "require_grad" and isinstance(
                ctx.parent(attribute), cst.AssignTarget
            ):
                ctx.substitute(attribute.attr, cst.Name("requires_grad"))
                return True
        return False
