"""double-softmax: feed CrossEntropyLoss the logits, not their softmax."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import (
    Codemod,
    SourceContext,
    dotted_name,
    name_is_read,
    scope_of,
)
from torchdoctor.agent.fixes.models import FixKind, FixTarget

_CE_FUNCTIONS = ("cross_entropy",)
_CE_CLASSES = ("CrossEntropyLoss",)


class DoubleSoftmaxFix(Codemod):
    """Removes a softmax whose only consumer is a cross-entropy loss (which applies
    log_softmax itself): inline `criterion(F.softmax(z, 1), y)` -> `criterion(z, y)`, or
    `p = F.softmax(z, 1)` -> `p = z` when `p` feeds nothing but the loss. A softmax inside a
    model's forward is left alone: its output may serve inference too."""

    rule = "double-softmax"
    kind = FixKind.CORRECTNESS
    summary = "drop the softmax before CrossEntropyLoss"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        if target.data.get("softmax_of_probabilities"):
            return ctx.decline(
                "a softmax of what is a softmax on some path only: whether the other paths "
                "give logits decides which softmax goes; drop the second one by hand"
            )
        losses = _cross_entropy_names(ctx)
        for call in ctx.find(cst.Call, within=(target.line, target.end_line)):
            if not _is_cross_entropy(ctx, call, losses) or not call.args:
                continue
            first = call.args[0].value
            inner = softmax_input(ctx, first)
            if inner is not None:
                ctx.substitute(first, inner)
                return True
            if isinstance(first, cst.Name):
                return _edit_assignment(ctx, call, first.value)
        return ctx.decline(
            "the softmax is not applied in this function (a model's forward or a helper "
            "returns probabilities): removing it there would change what other callers get; "
            "return logits and apply softmax only where probabilities are needed"
        )


def _edit_assignment(ctx: SourceContext, loss_call: cst.Call, name: str) -> bool:
    scope = scope_of(ctx, loss_call)
    assigns = [
        a
        for a in ctx.find(cst.Assign, inside=scope)
        if any(dotted_name(t.target) == name for t in a.targets)
    ]
    if len(assigns) != 1 or len(assigns[0].targets) != 1:
        return ctx.decline(f"`{name}` is assigned more than once before the loss")
    inner = softmax_input(ctx, assigns[0].value)
    if inner is None:
        return ctx.decline(f"`{name}` does not come from a softmax in this function")
    if name_is_read(ctx, name, scope, skip=loss_call):
        return ctx.decline(f"the probabilities in `{name}` are also used besides the loss")
    ctx.substitute(assigns[0].value, inner)
    return True


def softmax_input(ctx: SourceContext, expr: cst.BaseExpression) -> cst.BaseExpression | None:
    """`F.softmax(z, dim=1)`, `torch.softmax(z, 1)`, `z.softmax(1)`, `nn.Softmax(1)(z)` -> z."""
    if not isinstance(expr, cst.Call):
        return None
    func = expr.func
    qual = ctx.qualname(func) or ""
    if qual in ("torch.softmax", "torch.nn.functional.softmax") and expr.args:
        return expr.args[0].value
    if isinstance(func, cst.Attribute) and func.attr.value == "softmax" and not qual:
        return func.value
    if isinstance(func, cst.Call) and (ctx.qualname(func.func) or "").endswith("nn.Softmax"):
        return expr.args[0].value if expr.args else None
    return None


def _cross_entropy_names(ctx: SourceContext) -> set[str]:
    """Names bound to a CrossEntropyLoss instance."""
    names = set()
    for assign in ctx.find(cst.Assign):
        value = assign.value
        if (
            isinstance(value, cst.Call)
            and (ctx.qualname(value.func) or dotted_name(value.func) or "").split(".")[-1]
            in _CE_CLASSES
        ):
            names |= {n for t in assign.targets if (n := dotted_name(t.target))}
    return names


def _is_cross_entropy(ctx: SourceContext, call: cst.Call, losses: set[str]) -> bool:
    name = dotted_name(call.func) or ""
    qual = ctx.qualname(call.func) or ""
    return name in losses or qual.split(".")[-1] in _CE_FUNCTIONS
