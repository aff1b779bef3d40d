"""numpy-of-graph-tensor: `t.numpy()` -> `t.detach().cpu().numpy()` (what the finding lacks)."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class NumpyOfGraphTensorFix(Codemod):
    """Puts in front of `.numpy()` the steps the finding says are missing: `.detach()` when
    the tensor is still in the graph, `.cpu()` when it may be on the GPU
    (`loss.data.numpy()` -> `loss.data.cpu().numpy()`, the fix the real script got). The
    values are the same numbers; only where and how they are read changes."""

    rule = "numpy-of-graph-tensor"
    kind = FixKind.CORRECTNESS
    summary = "detach and move to the host before numpy()"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        steps = [name for name in ("detach", "cpu") if target.data.get(name)]
        if not steps:
            return False
        for call in ctx.find(cst.Call, within=(target.line, target.end_line)):
            func = call.func
            if not (isinstance(func, cst.Attribute) and func.attr.value == "numpy"):
                continue
            receiver = func.value
            present = _chain_names(receiver)
            missing = [
                s for s in steps if s not in present and not (s == "detach" and "data" in present)
            ]
            if not missing:
                return False  # already detached and on the host: nothing left to do
            for step in missing:
                receiver = cst.Call(func=cst.Attribute(value=receiver, attr=cst.Name(step)))
            ctx.substitute(func, func.with_changes(value=receiver))
            return True
        return False


def _chain_names(expr: cst.BaseExpression) -> set[str]:
    """The methods and attributes on the way from the tensor to `.numpy()`."""
    names: set[str] = set()
    while True:
        if isinstance(expr, cst.Call):
            expr = expr.func
        elif isinstance(expr, cst.Attribute):
            names.add(expr.attr.value)
            expr = expr.value
        elif isinstance(expr, cst.Subscript):
            expr = expr.value
        else:
            return names
