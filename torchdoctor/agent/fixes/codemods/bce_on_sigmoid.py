"""bce-on-sigmoid: BCEWithLogitsLoss on logits instead of BCELoss on a sigmoid."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import BF16_RTOL, Codemod, SourceContext, dotted_name
from torchdoctor.agent.fixes.codemods.common import drop_sigmoid, sigmoid_input
from torchdoctor.agent.fixes.models import FixKind, FixTarget

_BCE_FUNCTION = "torch.nn.functional.binary_cross_entropy"


class BceOnSigmoidFix(Codemod):
    """`nn.BCELoss()` + `criterion(torch.sigmoid(z), y)` -> `nn.BCEWithLogitsLoss()` +
    `criterion(z, y)`; `F.binary_cross_entropy(torch.sigmoid(z), y)` ->
    `F.binary_cross_entropy_with_logits(z, y)`. Applied only when every use of the criterion
    takes a sigmoid, so no caller is left passing probabilities to a logits loss. Same
    function, computed stably (log-sum-exp): a precision-class change."""

    rule = "bce-on-sigmoid"
    kind = FixKind.PRECISION
    summary = "BCEWithLogitsLoss on logits instead of BCELoss on sigmoid outputs"
    rtol = BF16_RTOL

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        for call in ctx.find(cst.Call, within=(target.line, target.end_line)):
            if not call.args or sigmoid_input(ctx, call.args[0].value) is None:
                continue
            if ctx.qualname(call.func) == _BCE_FUNCTION:
                if not isinstance(call.func, cst.Attribute):
                    return False
                ctx.replace(call, _to_logits_function)
                drop_sigmoid(ctx, call)
                return True
            name = dotted_name(call.func)
            if name is not None:
                return _edit_criterion(ctx, name)
        where = target.data.get("sigmoid_line")
        return ctx.decline(
            "the sigmoid is not applied in the loss call"
            + (f" but at line {where}" if isinstance(where, int) else "")
            + ": dropping it there would change what that code returns to its other users "
            "(inference, metrics); return logits, apply the sigmoid where probabilities are "
            "needed, and use BCEWithLogitsLoss"
        )


def _edit_criterion(ctx: SourceContext, name: str) -> bool:
    ctors = [
        a
        for a in ctx.find(cst.Assign)
        if any(dotted_name(t.target) == name for t in a.targets)
        and isinstance(a.value, cst.Call)
        and (ctx.qualname(a.value.func) or "").endswith("nn.BCELoss")
    ]
    uses = ctx.find(cst.Call, where=lambda c: dotted_name(c.func) == name)
    if len(ctors) != 1 or not uses or not isinstance(ctors[0].value, cst.Call):
        return ctx.decline(f"`{name}` is not built once from nn.BCELoss in this file")
    ctor = ctors[0].value
    if not isinstance(ctor.func, cst.Attribute):
        return ctx.decline(f"`{name}`'s BCELoss is imported by name; change it by hand")
    if any(not u.args or sigmoid_input(ctx, u.args[0].value) is None for u in uses):
        return ctx.decline(
            f"`{name}` is also called on inputs that are not sigmoid outputs: a logits loss "
            "would get probabilities there"
        )
    ctx.replace(ctor.func, _to_logits_class)
    for use in uses:
        drop_sigmoid(ctx, use)
    return True


def _to_logits_function(node: cst.CSTNode) -> cst.CSTNode:
    if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute):
        logits = node.func.with_changes(attr=cst.Name("binary_cross_entropy_with_logits"))
        return node.with_changes(func=logits)
    return node


def _to_logits_class(node: cst.CSTNode) -> cst.CSTNode:
    if isinstance(node, cst.Attribute):
        return node.with_changes(attr=cst.Name("BCEWithLogitsLoss"))
    return node
