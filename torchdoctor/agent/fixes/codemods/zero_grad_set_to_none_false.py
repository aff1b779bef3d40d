"""zero-grad-set-to-none-false: let zero_grad() drop gradients instead of memsetting them."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import (
    EXACT_RTOL,
    Codemod,
    SourceContext,
    keyword,
    method_call,
)
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class ZeroGradSetToNoneFix(Codemod):
    rule = "zero-grad-set-to-none-false"
    kind = FixKind.PERFORMANCE
    summary = "zero_grad(set_to_none=True): no memset kernel per parameter"
    rtol = EXACT_RTOL
    overhead = True

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        for call in ctx.find(cst.Call, within=(target.line, target.end_line)):
            arg = keyword(call, "set_to_none") if method_call(call, "zero_grad") else None
            if arg is not None and isinstance(arg.value, cst.Name) and arg.value.value == "False":
                ctx.set_call_keyword(call, "set_to_none", "True")
        return True
