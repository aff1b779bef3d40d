"""channels-flattened-without-permute: `x(.contiguous()).view(-1, c)` ->
`x.permute(0, 2, 3, 1).reshape(-1, c)`."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class ChannelsFlattenedWithoutPermuteFix(Codemod):
    """Moves the channel axis last before flattening, in the order the flattened target
    already has (batch, then positions): each row becomes one position's channel scores.
    `reshape` copies the permuted tensor when it has to, so `.contiguous()` is dropped."""

    rule = "channels-flattened-without-permute"
    kind = FixKind.CORRECTNESS
    summary = "permute the channel axis last before flattening to rows"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        name, channels, rank = (target.data.get(k) for k in ("name", "channels", "rank"))
        if not isinstance(name, str) or not isinstance(channels, str) or not isinstance(rank, int):
            return False
        order = ", ".join(["0", *(str(d) for d in range(2, rank)), "1"])
        for call in ctx.find(cst.Call, within=(target.line, target.end_line)):
            func = call.func
            if not (
                isinstance(func, cst.Attribute)
                and func.attr.value in ("view", "reshape")
                and len(call.args) == 2
                and ctx.code(call.args[1].value) == channels
            ):
                continue
            receiver = func.value
            while (
                isinstance(receiver, cst.Call)
                and isinstance(receiver.func, cst.Attribute)
                and receiver.func.attr.value == "contiguous"
            ):
                receiver = receiver.func.value
            if not (isinstance(receiver, cst.Name) and receiver.value == name):
                continue
            fixed = cst.parse_expression(f"{name}.permute({order}).reshape(-1, {channels})")
            ctx.substitute(call, fixed)
            return True
        return False
