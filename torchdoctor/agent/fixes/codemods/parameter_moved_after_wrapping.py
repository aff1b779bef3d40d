"""parameter-moved-after-wrapping: `nn.Parameter(t, ...).to(x)` -> `nn.Parameter(t.to(x), ...)`."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext
from torchdoctor.agent.fixes.models import FixKind, FixTarget

_PARAMETER = frozenset({"torch.nn.Parameter", "torch.nn.parameter.Parameter"})


class ParameterMovedAfterWrappingFix(Codemod):
    """Moves the call that follows the wrapping onto the wrapped data: the Parameter is built
    on the device and dtype the code asked for and stays registered; the other arguments of
    `nn.Parameter` (`requires_grad=False`) are kept."""

    rule = "parameter-moved-after-wrapping"
    kind = FixKind.CORRECTNESS
    summary = "move or cast the data before wrapping it in nn.Parameter"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        method = target.data.get("method")
        for call in ctx.find(cst.Call, within=(target.line, target.end_line)):
            func = call.func
            if not (
                isinstance(func, cst.Attribute)
                and func.attr.value == method
                and isinstance(func.value, cst.Call)
                and ctx.qualname(func.value.func) in _PARAMETER
                and func.value.args
                and func.value.args[0].keyword is None
                and func.value.args[0].star == ""
            ):
                continue
            wrap = func.value
            data = wrap.args[0]
            moved = cst.Call(func=cst.Attribute(value=data.value, attr=func.attr), args=call.args)
            args = [data.with_changes(value=moved), *wrap.args[1:]]
            ctx.substitute(call, wrap.with_changes(args=args))
            return True
        return False
