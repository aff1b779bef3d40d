"""host-sync-in-step: accumulate step values on the device, read them once after the loop."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import (
    EXACT_RTOL,
    Codemod,
    SourceContext,
    dotted_name,
    method_call,
    name_is_read,
)
from torchdoctor.agent.fixes.codemods.common import enclosing_loop
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class HostSyncInStepFix(Codemod):
    """`total += loss.item()` -> `total += loss.detach()` with `total = float(total)` after
    the loop; `losses.append(loss.item())` -> `losses.append(loss.detach())` with
    `losses = [float(v) for v in losses]` after the loop. Applied only when the accumulator
    is not read inside the loop, so nothing sees the tensor before it is converted back."""

    rule = "host-sync-in-step"
    kind = FixKind.PERFORMANCE
    summary = "accumulate on device instead of calling .item() every step"
    rtol = EXACT_RTOL

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        span = (target.line, target.end_line)
        for aug in ctx.find(cst.AugAssign, within=span):
            item = method_call(aug.value, "item")
            if (
                isinstance(aug.operator, cst.AddAssign)
                and item
                and isinstance(aug.target, cst.Name)
            ):
                return _accumulate(ctx, aug, aug.target.value, item, f"float({aug.target.value})")
        for call in ctx.find(cst.Call, within=span):
            if not method_call(call, "append") or len(call.args) != 1:
                continue
            item = method_call(call.args[0].value, "item")
            assert isinstance(call.func, cst.Attribute)
            name = dotted_name(call.func.value)
            if item is None or name is None or "." in name:
                continue
            return _accumulate(ctx, call, name, item, f"[float(v) for v in {name}]")
        return False


def _accumulate(ctx: SourceContext, at: cst.CSTNode, name: str, item: cst.Call, back: str) -> bool:
    loop = enclosing_loop(ctx, at)
    if loop is None or item.args or not isinstance(item.func, cst.Attribute):
        return False
    if name_is_read(ctx, name, loop.body, skip=at):
        return False
    value = item.func.value
    ctx.substitute(item, cst.Call(func=cst.Attribute(value=value, attr=cst.Name("detach"))))
    ctx.insert_after(loop, f"{name} = {back}\n")
    return True
