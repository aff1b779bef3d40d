"""loss-truncated-to-int: a loss value converted with `int(...)`, `.int()` or `.long()`."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import identifier
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
_LOSS_WORDS = frozenset({"loss", "losses"})
_INTEGER_METHODS = frozenset({"int", "long"})


class LossTruncatedToInt(Rule):
    """Detects a loss value truncated to an integer: `int(batch_loss)`, `int(loss.item())`,
    `int(losses[i])`, `val_loss.long()`, `loss.int()`, where the value's name ends in
    `loss` or `losses` (`loss`, `batch_loss`, `self.val_loss`).

    Why it matters: a loss is a real number, mostly below 1 late in training; truncated it
    is 0 (or a staircase), and the sum, average or log built on it is wrong without any
    error. fairseq2's `Seq2SeqModelMetricBag` added `int(batch_loss)` to its running loss
    until `b248c37`.

    Not reported: names that only start with loss (`loss_scale`, `loss_mask`,
    `loss_count`), `float(loss)`, `round(loss, 4)`, and integer conversions of other values.

    Example:
        for batch, batch_loss in zip(batches, losses):
            loss += int(batch_loss)

    Fix: `float(batch_loss)` (or `batch_loss.item()`).
    """

    id = "loss-truncated-to-int"
    point = 2
    severity = Severity.MEDIUM
    title = "Loss value truncated to an integer"
    items: ClassVar[tuple[str, ...]] = ("2.3",)
    triggers = Triggers(all_of=(("loss",), ("int(", "long(")))

    def finish(self, ctx: ModuleContext) -> None:
        for call in ctx.flow.calls_named(("int", "long")):
            func = call.func
            if isinstance(func, ast.Name) and func.id == "int" and len(call.args) == 1:
                value = call.args[0]
            elif (
                isinstance(func, ast.Attribute)
                and func.attr in _INTEGER_METHODS
                and not call.args
                and not call.keywords
            ):
                value = func.value
            else:
                continue
            name = _loss_name(value)
            if name is None:
                continue
            ctx.report(
                self,
                call,
                f"`{ast.unparse(call)}` truncates the loss `{name}` to an integer: a loss "
                "below 1 becomes 0 and every sum or average built on it is wrong; use "
                "`float(...)` or `.item()`",
                data={"loss": name},
            )


def _loss_name(value: ast.expr) -> str | None:
    """The loss-named value under `.item()`, `.detach()`, `.cpu()` and indexing, or None."""
    while True:
        if (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Attribute)
            and value.func.attr in ("item", "detach", "cpu", "sum", "mean")
        ):
            value = value.func.value
        elif isinstance(value, ast.Subscript):
            value = value.value
        else:
            break
    if not isinstance(value, ast.Name | ast.Attribute):
        return None
    name = identifier(value)
    words = _WORDS.findall(name)
    if words and words[-1].lower() in _LOSS_WORDS:
        return ast.unparse(value)
    return None
