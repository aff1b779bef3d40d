"""factory-without-device-in-step: create the tensor on its consumer's device."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import EXACT_RTOL, Codemod, SourceContext, keyword
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class FactoryWithoutDeviceInStepFix(Codemod):
    """Adds `device=<x>.device` to the flagged factory call, where `x` is the tensor the rule
    found beside it in the loss or model call (`device_from`). A legacy typed constructor
    (`torch.LongTensor([...])`) takes only CPU devices and `torch.from_numpy` no `device=` at
    all, so those become `torch.tensor(data, dtype=..., device=...)` and
    `torch.as_tensor(array, device=...)`."""

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
        call = calls[0]
        function = (ctx.qualname(call.func) or "").removeprefix("torch.")
        torch = ctx.require_module("torch")
        device = f"{source}.device"
        if function in _LEGACY_DTYPES or function == "from_numpy":
            if len(call.args) != 1 or call.args[0].keyword is not None:
                return ctx.decline(
                    f"`{ctx.code(call.func)}(...)` takes no `device=` and is not called on "
                    "one array here: build it with `torch.tensor(data, dtype=..., device=...)`"
                )
            data = ctx.code(call.args[0].value)
            if function == "from_numpy":
                new = f"{torch}.as_tensor({data}, device={device})"
            else:
                dtype = _LEGACY_DTYPES[function].format(torch=torch)
                new = f"{torch}.tensor({data}, dtype={dtype}, device={device})"
            ctx.substitute(call, cst.parse_expression(new))
            return True
        ctx.set_call_keyword(call, "device", device)
        return True


_LEGACY_DTYPES = {
    "Tensor": "{torch}.get_default_dtype()",
    "FloatTensor": "{torch}.float32",
    "DoubleTensor": "{torch}.float64",
    "HalfTensor": "{torch}.float16",
    "LongTensor": "{torch}.int64",
    "IntTensor": "{torch}.int32",
    "ShortTensor": "{torch}.int16",
    "CharTensor": "{torch}.int8",
    "ByteTensor": "{torch}.uint8",
    "BoolTensor": "{torch}.bool",
}
"""The legacy CPU constructors (which raise given a CUDA `device=`) and the dtype each makes."""
