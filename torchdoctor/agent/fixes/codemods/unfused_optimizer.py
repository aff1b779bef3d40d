"""unfused-optimizer: use the fused CUDA kernel for Adam/AdamW/SGD when the params are on CUDA."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext, keyword
from torchdoctor.agent.fixes.codemods.common import mentions_cuda, target_spans
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
    cuda_only = True
    summary = "fused=torch.cuda.is_available() on the optimizer"
    rtol = FUSED_RTOL
    overhead = True

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        """The flagged optimizer and the other places the rule named in this file (its
        `related` anchors: a GAN's second optimizer, the SGD branch beside an Adam one)."""
        if not mentions_cuda(ctx):
            return False
        edited = False
        for span in target_spans(target):
            for call in ctx.find(cst.Call, within=span):
                if ctx.qualname(call.func) not in _FUSABLE:
                    continue
                if keyword(call, "fused") is None and keyword(call, "foreach") is None:
                    torch = ctx.require_module("torch")
                    ctx.set_call_keyword(call, "fused", f"{torch}.cuda.is_available()")
                    edited = True
                break
        return edited
