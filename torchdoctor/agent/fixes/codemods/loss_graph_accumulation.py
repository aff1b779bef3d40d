"""loss-graph-accumulation: accumulate a detached loss so each step's graph can be freed."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import EXACT_RTOL, Codemod, SourceContext, method_call
from torchdoctor.agent.fixes.models import FixKind, FixTarget, SmokeRun

_DETACHING = ("detach", "item", "tolist", "cpu", "numpy")
# A tuple, list, dict or set has no `.detach()`, and what it holds besides tensors is unknown.
_CONTAINERS = (
    cst.Tuple,
    cst.List,
    cst.Dict,
    cst.Set,
    cst.ListComp,
    cst.DictComp,
    cst.SetComp,
    cst.GeneratorExp,
)
_CONTAINER_REFUSAL = (
    "the stored value is a container, which has no .detach(): detach each tensor in it by "
    "hand (what else it holds is not known here)"
)


class LossGraphAccumulationFix(Codemod):
    """`total += loss` -> `total += loss.detach()` (and `losses.append(loss)` likewise).
    `detach()` rather than `item()`: it frees the graph without a host-device sync."""

    rule = "loss-graph-accumulation"
    kind = FixKind.CORRECTNESS
    summary = "accumulate loss.detach() instead of the loss tensor"
    rtol = EXACT_RTOL

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        if target.data.get("unread"):
            return ctx.decline(
                "nothing reads the accumulator: the losses in it are dropped, not kept; whether "
                "they belong in the back-propagated total is a human's call"
            )
        if target.data.get("element"):
            return ctx.decline(
                f"the stored value is element {target.data['element']} of what the model "
                "returns, whose type is not known here (a list or a dict has no .detach()): "
                "detach the tensors in it by hand"
            )
        span = (target.line, target.end_line)
        for aug in ctx.find(cst.AugAssign, within=span):
            if isinstance(aug.operator, cst.AddAssign) and not _detached(aug.value):
                if isinstance(aug.value, _CONTAINERS):
                    return ctx.decline(_CONTAINER_REFUSAL)
                ctx.replace(aug, _detach_value)
                return True
        for call in ctx.find(cst.Call, within=span):
            if (
                method_call(call, "append")
                and len(call.args) == 1
                and not _detached(call.args[0].value)
            ):
                if isinstance(call.args[0].value, _CONTAINERS):
                    return ctx.decline(_CONTAINER_REFUSAL)
                ctx.replace(call, _detach_first_arg)
                return True
        return False

    def symptom_gone(self, before: SmokeRun, after: SmokeRun) -> tuple[bool, str]:
        """The memory probe scans live autograd graphs: their size must stop growing."""
        grew = before.signals.graph_retention
        if grew is None:
            return super().symptom_gone(before, after)
        grows = after.signals.graph_retention
        rate = f"{grew.nodes_per_step:.0f} graph nodes/step kept alive before the fix"
        if grows is not None:
            return False, f"{rate}; still {grows.nodes_per_step:.0f} after"
        return True, f"{rate}; no growing graph after"


def _detached(expr: cst.BaseExpression) -> bool:
    return any(method_call(expr, m) is not None for m in _DETACHING)


def _detach(expr: cst.BaseExpression) -> cst.BaseExpression:
    if not isinstance(expr, cst.Name | cst.Attribute | cst.Call | cst.Subscript):
        expr = expr.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
    return cst.Call(func=cst.Attribute(value=expr, attr=cst.Name("detach")))


def _detach_value(node: cst.CSTNode) -> cst.CSTNode:
    return node.with_changes(value=_detach(node.value)) if isinstance(node, cst.AugAssign) else node


def _detach_first_arg(node: cst.CSTNode) -> cst.CSTNode:
    if not isinstance(node, cst.Call):
        return node
    first = node.args[0]
    return node.with_changes(args=[first.with_changes(value=_detach(first.value))])
