"""argmax-without-dim: predictions taken with argmax over the whole batch tensor."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import kwarg
from torchdoctor.agent.models import Severity

_REDUCTIONS = frozenset({"argmax", "argmin"})
_KEEPS_SHAPE = frozenset({"detach", "cpu", "float", "to", "cuda", "contiguous"})
_MAX_HOPS = 6


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
            if value is None or not _in_loop(ctx, call) or not _compared(ctx, call):
                continue
            if not _model_output(ctx, value, 0):
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


def _model_output(ctx: ModuleContext, value: ast.expr, hops: int) -> bool:
    """A model's whole output (through names, `.detach()`, `.cpu()`, `.float()`), not a slice
    of it (`logits[0, -1]` is one example's row)."""
    if hops > _MAX_HOPS:
        return False
    if isinstance(value, ast.Name):
        values = ctx.flow.definitions(value)
        return len(values) == 1 and _model_output(ctx, values[0], hops + 1)
    if not isinstance(value, ast.Call):
        return False
    func = value.func
    if isinstance(func, ast.Attribute) and func.attr in _KEEPS_SHAPE:
        return _model_output(ctx, func.value, hops + 1)
    return ctx.flow.is_model_call(value)


def _in_loop(ctx: ModuleContext, node: ast.AST) -> bool:
    for anc in ctx.ancestors(node):
        if isinstance(anc, ast.For | ast.AsyncFor | ast.comprehension):
            return True
        if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return False
    return False


def _compared(ctx: ModuleContext, call: ast.Call) -> bool:
    """The result takes part in `==`/`!=`, directly or through the name it is bound to."""
    node: ast.AST = call
    parent = ctx.parents.get(node)
    while isinstance(parent, ast.Call | ast.Attribute) and not isinstance(parent, ast.Compare):
        node, parent = parent, ctx.parents.get(parent)
    if isinstance(parent, ast.Compare):
        return True
    if isinstance(parent, ast.Assign) and len(parent.targets) == 1:
        target = parent.targets[0]
        if isinstance(target, ast.Name):
            scope = ctx.enclosing_function(call)
            reads = [r for r in ctx.flow.reads_of(target.id) if ctx.enclosing_function(r) is scope]
            return any(isinstance(ctx.parents.get(r), ast.Compare) for r in reads)
    return False
