"""detached-loss-input: keep the model's output attached where the loss needs it."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class DetachedLossInputFix(Codemod):
    """Removes the cut the rule names (`out.detach()` -> `out`, `model(x).data` ->
    `model(x)`) where it is written: the loss term then back-propagates into the model.
    Declines for a cut that turns the value into a Python number or an array (`.item()`,
    `.numpy()`, `.tolist()`), whose code after it expects that type, and for a distribution's
    `sample()` (only a reparameterisable distribution has `rsample()`)."""

    rule = "detached-loss-input"
    kind = FixKind.CORRECTNESS
    summary = "remove the detach()/.data that cuts the loss from the model"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        cut, line = target.data.get("cut"), target.data.get("cut_line")
        if not isinstance(cut, str) or not isinstance(line, int):
            return ctx.decline("the rule did not name the cut")
        wanted = "".join(cut.split())
        candidates: list[cst.Call | cst.Attribute] = [
            *ctx.find(cst.Call, within=(line, line)),
            *ctx.find(cst.Attribute, within=(line, line)),
        ]
        found = [n for n in candidates if "".join(ctx.code(n).split()) == wanted]
        if len(found) != 1:
            return ctx.decline(f"no single `{cut}` on line {line}")
        receiver = _attached(found[0])
        if _drawn(found[0]):
            return ctx.decline(
                f"`{cut}` draws without reparameterisation: use `rsample()` where the "
                "distribution supports it (a discrete one does not)"
            )
        if receiver is None:
            return ctx.decline(
                f"`{cut}` turns the output into a Python number or an array, which the code "
                "after it may expect: compute the loss on the tensor by hand"
            )
        ctx.substitute(found[0], receiver)
        return True


def _attached(cut: cst.Call | cst.Attribute) -> cst.BaseExpression | None:
    """What `cut` detaches: the receiver of `.detach()` or `.data`, else None."""
    if isinstance(cut, cst.Attribute):
        return cut.value if cut.attr.value == "data" else None
    func = cut.func
    if isinstance(func, cst.Attribute) and func.attr.value == "detach" and not cut.args:
        return func.value
    return None


def _drawn(cut: cst.Call | cst.Attribute) -> bool:
    """`dist.sample()`: a draw, not a detach."""
    return (
        isinstance(cut, cst.Call)
        and isinstance(cut.func, cst.Attribute)
        and cut.func.attr.value == "sample"
    )
