"""pin-memory-off: page-locked host batches, so host-to-device copies can run asynchronously."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import EXACT_RTOL, Codemod, SourceContext, keyword
from torchdoctor.agent.fixes.codemods.common import is_dataloader
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class PinMemoryOffFix(Codemod):
    rule = "pin-memory-off"
    kind = FixKind.PERFORMANCE
    summary = "DataLoader(pin_memory=torch.cuda.is_available())"
    rtol = EXACT_RTOL
    relieves = "data_wait_share"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        loaders = [
            c
            for c in ctx.find(cst.Call, within=(target.line, target.end_line))
            if is_dataloader(ctx, c) and _unpinned(keyword(c, "pin_memory"))
        ]
        if not loaders:
            return False
        torch = ctx.require_module("torch")
        for loader in loaders:
            ctx.set_call_keyword(loader, "pin_memory", f"{torch}.cuda.is_available()")
        return True


def _unpinned(arg: cst.Arg | None) -> bool:
    """No `pin_memory=` at all, or a literal False."""
    return arg is None or (isinstance(arg.value, cst.Name) and arg.value.value == "False")
