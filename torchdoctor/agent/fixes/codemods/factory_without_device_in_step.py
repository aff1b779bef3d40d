"""factory-without-device-in-step: create the tensor on its consumer's device."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import EXACT_RTOL, Codemod, SourceContext, keyword
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class FactoryWithoutDeviceInStepFix(Codemod):
    """Adds `device=<x>.device` to the flagged factory call, where `x` is the tensor the rule
    found beside it in the loss or model call (`device_from`)."""

    rule = "factory-without-device-in-step"
    kind = FixKind.CORRECTNESS
    summary = "create the tensor on the device of the tensor it is used with"
    rtol = EXACT_RTOL

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        source = target.data.get("device_from")
        if not isinstance(source, str) or not source.isidentifier():
            return False
        calls = [
            c
            for c in ctx.find(cst.Call, within=(target.line, target.line))
            if ctx.line(c) == target.line and (ctx.qualname(c.func) or "").startswith("torch.")
        ]
        if len(calls) != 1 or keyword(calls[0], "device") is not None:
            return False
        ctx.set_call_keyword(calls[0], "device", f"{source}.device")
        return True
