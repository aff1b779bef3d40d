"""arguments-swapped: `f(pred, gold, smoothing, pad)` -> `f(pred, gold, pad, smoothing)`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class ArgumentsSwappedFix(Codemod):
    """Trades the two arguments' values back, so that each parameter gets the variable named
    after it (the finding says which two, by position or keyword); the call's layout,
    keywords and comments stay."""

    rule = "arguments-swapped"
    kind = FixKind.CORRECTNESS
    summary = "pass each argument under its own parameter"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        callee = target.data.get("callee")
        slots = target.data.get("swap")
        if not isinstance(callee, str) or not isinstance(slots, list) or len(slots) != 2:
            return False
        for call in ctx.find(cst.Call, within=(target.line, target.end_line)):
            func = call.func
            name = func.attr.value if isinstance(func, cst.Attribute) else ""
            if isinstance(func, cst.Name):
                name = func.value
            if name != callee:
                continue
            first, second = (_argument(call, slot) for slot in slots)
            if first is None or second is None:
                return False
            if (_name(first.value), _name(second.value)) != (
                slots[1].get("param"),
                slots[0].get("param"),
            ):
                return False  # not (or no longer) in each other's places
            ctx.replace(first, _with_value(second.value))
            ctx.replace(second, _with_value(first.value))
            return True
        return False


def _name(value: cst.BaseExpression) -> str:
    """The variable's name, or its last attribute (`opt.smoothing` -> 'smoothing')."""
    if isinstance(value, cst.Attribute):
        return value.attr.value
    return value.value if isinstance(value, cst.Name) else ""


def _with_value(value: cst.BaseExpression) -> Callable[[cst.CSTNode], cst.CSTNode]:
    def put(arg: cst.CSTNode) -> cst.CSTNode:
        assert isinstance(arg, cst.Arg)
        return arg.with_changes(value=value)

    return put


def _argument(call: cst.Call, slot: Any) -> cst.Arg | None:
    """The argument at `slot` (`{"position": i}` or `{"keyword": name}`) of `call`."""
    positional = [a for a in call.args if a.keyword is None and not a.star]
    if isinstance(slot, dict) and isinstance(slot.get("position"), int):
        index = slot["position"]
        return positional[index] if index < len(positional) else None
    keyword = slot.get("keyword") if isinstance(slot, dict) else None
    return next((a for a in call.args if a.keyword and a.keyword.value == keyword), None)
