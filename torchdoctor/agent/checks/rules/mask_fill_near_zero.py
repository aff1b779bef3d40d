"""mask-fill-near-zero: a mask filled with a negative value next to zero (`-1e-7`)."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_LARGEST_TINY = 1e-4


class MaskFillNearZero(Rule):
    """Detects `masked_fill(mask, v)` or `masked_fill_(mask, v)` where `v` is a negative
    number of magnitude at most 1e-4, written there or bound once to a module constant or a
    local name (`MASK_VALUE = -1e-7`): the exponent of a large negative fill (`-1e7`,
    `-1e9`) with its sign flipped.

    Why it matters: a mask fill replaces the scores of the positions to hide with a value
    the softmax sends to zero; `-1e-7` is zero to the softmax's eye, so the hidden
    positions keep almost their full weight (a causal mask that hides nothing: the model
    reads the tokens it predicts). gpt-neox's early `MASK_VALUE = -1e-7` did this until
    `102d09b`.

    Not reported: large negative fills (`-1e9`, `float('-inf')`, `torch.finfo(x.dtype).min`),
    zero, positive small values (an epsilon kept off zero before a log), and names assigned
    more than once.

    Example:
        MASK_VALUE = -1e-7
        scores.masked_fill_(causal_mask, MASK_VALUE)

    Fix: `-1e7`, `float('-inf')` or `torch.finfo(scores.dtype).min`.
    """

    id = "mask-fill-near-zero"
    point = 2
    severity = Severity.HIGH
    title = "Mask filled with a value next to zero"
    items: ClassVar[tuple[str, ...]] = ("2.3",)
    triggers = Triggers(("masked_fill",))

    def finish(self, ctx: ModuleContext) -> None:
        for call in ctx.flow.calls_named(("masked_fill", "masked_fill_")):
            value: ast.expr | None = call.args[1] if len(call.args) >= 2 else None
            for keyword in call.keywords:
                if keyword.arg == "value":
                    value = keyword.value
            if value is None:
                continue
            number = _number(ctx, value)
            if number is None or not (-_LARGEST_TINY <= number < 0):
                continue
            shown = ast.unparse(value)
            ctx.report(
                self,
                call,
                f"the fill value `{shown}` ({number:g}) is next to zero: the masked scores "
                "keep almost their weight after the softmax; a mask needs a large negative "
                f"(`-{1 / -number:g}`, `float('-inf')`, `torch.finfo(dtype).min`): the "
                "exponent's sign looks flipped",
                data={"value": number},
            )


def _number(ctx: ModuleContext, value: ast.expr) -> float | None:
    """The value of a number literal, a negated one, or a name bound once to one."""
    if isinstance(value, ast.Name):
        definitions = ctx.flow.definitions(value)
        if len(definitions) != 1:
            return None
        value = definitions[0]
    sign = 1.0
    if isinstance(value, ast.UnaryOp) and isinstance(value.op, ast.USub):
        sign, value = -1.0, value.operand
    if (
        isinstance(value, ast.Constant)
        and isinstance(value.value, int | float)
        and not isinstance(value.value, bool)
    ):
        return sign * float(value.value)
    return None
