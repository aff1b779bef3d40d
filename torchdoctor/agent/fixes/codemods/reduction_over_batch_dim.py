"""reduction-over-batch-dim: reduce over the class dimension."""

from __future__ import annotations

import re

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext, statement_of
from torchdoctor.agent.fixes.models import FixKind, FixTarget

_RELAYOUT = re.compile(r"\.(permute|transpose|movedim)\(")


class ReductionOverBatchDimFix(Codemod):
    """Turns the flagged reduction's dim 0 into dim 1 (`output.argmax(0)` ->
    `output.argmax(1)`, `torch.max(out, dim=0)` -> `torch.max(out, dim=1)`): the rule found
    it reducing a batch of model outputs, whose class dimension is 1 in PyTorch's layout
    (`(N, C)` scores, `(N, C, H, W)` segmentation maps, what `CrossEntropyLoss` reads).
    Declines when the statement rearranges the output's axes (`.log_softmax(0).permute(1, 0,
    2)`: a sequence output, whose classes are last), or when the call or its dim cannot be
    found as the rule saw them."""

    rule = "reduction-over-batch-dim"
    kind = FixKind.CORRECTNESS
    summary = "reduce over the class dimension (dim=1), not the batch"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        text, dim_at = target.data.get("call"), target.data.get("dim_at")
        if not isinstance(text, str) or not isinstance(dim_at, str | int):
            return ctx.decline("the rule did not name the reduction")
        wanted = "".join(text.split())
        calls = [
            c
            for c in ctx.find(cst.Call, within=(target.line, target.end_line))
            if "".join(ctx.code(c).split()) == wanted
        ]
        if len(calls) != 1:
            return ctx.decline(f"no single `{text}` at the finding")
        call = calls[0]
        statement = statement_of(ctx, call)
        if statement is not None and _RELAYOUT.search(ctx.code(statement)):
            return ctx.decline(
                "the output's layout is rearranged in the same statement (a CTC or sequence "
                "output's permute): choose its class dimension by hand"
            )
        if dim_at == "dim":
            dims = [a for a in call.args if a.keyword is not None and a.keyword.value == "dim"]
        else:
            positional = [a for a in call.args if a.keyword is None and a.star == ""]
            dims = positional[dim_at : dim_at + 1] if isinstance(dim_at, int) else []
        if len(dims) != 1 or ctx.code(dims[0].value).strip() != "0":
            return ctx.decline(f"`{text}` no longer reduces over dim 0")
        ctx.substitute(dims[0].value, cst.Integer("1"))
        return True
