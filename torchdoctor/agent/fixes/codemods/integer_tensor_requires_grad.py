"""integer-tensor-requires-grad: `torch.tensor(2, requires_grad=True)`: a float literal."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext
from torchdoctor.agent.fixes.models import FixKind, FixTarget

_LITERAL_DATA = {"tensor": 0, "as_tensor": 0, "full": 1}
"""Factories whose dtype follows a literal argument (its position): the literal made float."""
_DTYPE_KEYWORD = frozenset({"arange", "randint"})
"""Factories given `dtype=torch.float32` instead (their numbers are bounds and sizes)."""


class IntegerTensorRequiresGradFix(Codemod):
    """Makes the tensor floating point the way the code spells it: integer literals of the data
    (or `full`'s fill value) written as floats (`2` -> `2.0`, `[1, 2]` -> `[1.0, 2.0]`), or
    `dtype=torch.float32` for `arange`/`randint`. An integer `dtype=` the author wrote is left
    to a human: the values may be meant as indices."""

    rule = "integer-tensor-requires-grad"
    kind = FixKind.CORRECTNESS
    summary = "make the tensor floating point"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        factory = target.data.get("factory")
        if target.data.get("dtype_given"):
            return ctx.decline("the integer dtype was asked for: a human's call")
        for call in ctx.find(cst.Call, within=(target.line, target.end_line)):
            qualified = ctx.qualname(call.func) or ""
            if qualified != f"torch.{factory}":
                continue
            if factory in _DTYPE_KEYWORD:
                ctx.set_call_keyword(call, "dtype", f"{ctx.require_module('torch')}.float32")
                return True
            position = _LITERAL_DATA.get(str(factory))
            positional = [a for a in call.args if a.keyword is None]
            if position is None or position >= len(positional):
                return False
            integers = list(ctx.find(cst.Integer, inside=positional[position]))
            for literal in integers:
                ctx.substitute(literal, cst.Float(f"{int(literal.evaluated_value)}.0"))
            return bool(integers)
        return False
