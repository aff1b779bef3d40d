"""argmax-without-dim: predictions taken with argmax over the whole batch tensor."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.batch_outputs import (
    compared,
    in_loop,
    is_whole_model_output,
)
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import kwarg
from torchdoctor.agent.models import Severity

_REDUCTIONS = frozenset({"argmax", "argmin"})


class ArgmaxWithoutDim(Rule):
    """Detects `output.argmax()` / `torch.argmax(output)` with no `dim`, where `output` is a
    model's output computed in a loop over batches and the result is compared with something
    (`pred == target`).

    Why it matters: without `dim`, argmax flattens the tensor and returns a single index into
    `batch x classes`; compared with a batch of labels it broadcasts, and accuracy is
    computed from nonsense (often near zero, or near chance), with no error.

    Not reported: argmax with `dim` (positional or keyword), argmax of values that are not a
    model's output, single forwards outside a loop (one example, `model(x[None]).argmax()`),
    results that are not compared.

    Example:
        for x, y in test_loader:
            pred = model(x).argmax()
            correct += (pred == y).sum().item()

    Fix: `model(x).argmax(dim=1)` (the class dimension).
    """

    id = "argmax-without-dim"
    point = 3
    severity = Severity.HIGH
    title = "argmax without dim over a batch"
    items: ClassVar[tuple[str, ...]] = ("3.4",)

    def applies(self, ctx: ModuleContext) -> bool:
        return "argm" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        flow = ctx.flow
        for call in flow.calls_named(_REDUCTIONS):
            value = _reduced(ctx, call)
            if value is None or not in_loop(ctx, call) or not compared(ctx, call):
                continue
            if not is_whole_model_output(ctx, value):
                continue
            ctx.report(
                self,
                call,
                f"`{ast.unparse(call)}` has no dim: it returns one index into the flattened "
                "batch, not a prediction per example",
            )


def _reduced(ctx: ModuleContext, call: ast.Call) -> ast.expr | None:
    """The tensor a dim-less argmax/argmin reduces, else None."""
    if kwarg(call, "dim") is not None or kwarg(call, "axis") is not None:
        return None
    func = call.func
    qual = ctx.flow.qualname_of(call)
    if qual in ("torch.argmax", "torch.argmin"):
        return call.args[0] if len(call.args) == 1 else None
    if qual is None and isinstance(func, ast.Attribute) and not call.args:
        return func.value
    return None
