"""unfused-optimizer: use the fused CUDA kernel for Adam/AdamW/SGD when the params are on CUDA."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext, keyword
from torchdoctor.agent.fixes.codemods.common import mentions_cuda
from torchdoctor.agent.fixes.models import FixKind, FixTarget

_FUSABLE = {
    "torch.optim.Adam",
    "torch.optim.AdamW",
    "torch.optim.SGD",
    "torch.optim.adam.Adam",
    "torch.optim.adamw.AdamW",
    "torch.optim.sgd.SGD",
}
FUSED_RTOL = 1e-3
"""Fused and for-each kernels round differently; over a short run they agree to ~1e-4."""


class UnfusedOptimizerFix(Codemod):
    """Adds `fused=torch.cuda.is_available()` to the flagged optimizer, only in a script that
    moves its model to CUDA: a CPU run keeps the default implementation, a CUDA run gets one
    kernel for the whole update instead of several per parameter."""

    rule = "unfused-optimizer"
    kind = FixKind.PERFORMANCE
    summary = "fused=torch.cuda.is_available() on the optimizer"
    rtol = FUSED_RTOL

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        if not mentions_cuda(ctx):
            return False
        for call in ctx.find(cst.Call, within=(target.line, target.end_line)):
            if ctx.qualname(call.func) not in _FUSABLE:
                continue
            if keyword(call, "fused") or keyword(call, "foreach"):
                return False
            torch = ctx.require_module("torch")
            ctx.set_call_keyword(call, "fused", f"{torch}.cuda.is_available()")
            return True
        return False
