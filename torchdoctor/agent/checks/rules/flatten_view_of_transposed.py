"""flatten-view-of-transposed: `.view(-1)` of a transposed, non-contiguous tensor."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_TRANSPOSES = frozenset({"t", "transpose", "permute", "swapaxes", "swapdims", "movedim"})
_TRANSPOSED_ATTRIBUTES = frozenset({"T", "mT"})
# Element-wise operations and casts: their result keeps the input's (transposed) strides.
_KEEP_STRIDES = frozenset(
    {"eq", "ne", "gt", "ge", "lt", "le", "float", "double", "half", "long", "int", "bool",
     "byte", "type", "clone", "abs", "neg", "sigmoid", "exp", "mul", "add", "sub", "div"}
)  # fmt: skip
_MAX_HOPS = 6


class FlattenViewOfTransposed(Rule):
    """Detects `x.view(-1)` where `x` is (a slice or an element-wise result of) a transposed
    tensor: `.t()`, `.T`, `.transpose()`, `.permute()`, with no `.contiguous()` in between. The
    classic case is the top-k accuracy helper: `pred = pred.t()`, `correct = pred.eq(...)`,
    then `correct[:k].view(-1)`.

    Why it matters: a transpose only swaps strides, and element-wise results keep them, so
    the tensor is not contiguous; flattening it with `view` raises "view size is not
    compatible with input tensor's size and stride" (recent PyTorch versions no longer make
    such results contiguous, so code that ran for years starts failing).

    Not reported: `.reshape(-1)` and `.flatten()` (they copy when needed), a `.contiguous()`
    on the way, views that do not flatten (`.view(b, h, n, d)`), and values bound in several
    places (the transpose may not reach the view).

    Example:
        pred = logits.topk(5, 1)[1].t()
        correct = pred.eq(labels.view(1, -1).expand_as(pred))
        top5 = correct[:5].view(-1).float().sum()

    Fix: `correct[:5].reshape(-1)` (or `.flatten()`).
    """

    id = "flatten-view-of-transposed"
    point = 1
    severity = Severity.HIGH
    title = "view(-1) of a transposed tensor"
    items: ClassVar[tuple[str, ...]] = ("1.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset({"view"})
    triggers = Triggers((".view(",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        func = node.func
        if not (isinstance(func, ast.Attribute) and func.attr == "view" and _flattens(node)):
            return
        transpose = _transposed(ctx, func.value, 0)
        if transpose is None:
            return
        ctx.report(
            self,
            node,
            f"`{ast.unparse(func.value)}` comes from a transpose (line {transpose.lineno}) and "
            "is not contiguous: view(-1) raises; use reshape(-1) or flatten()",
        )


def _flattens(call: ast.Call) -> bool:
    """`.view(-1)`: one argument, the literal -1."""
    if len(call.args) != 1 or call.keywords:
        return False
    arg = call.args[0]
    return (
        isinstance(arg, ast.UnaryOp)
        and isinstance(arg.op, ast.USub)
        and isinstance(arg.operand, ast.Constant)
        and arg.operand.value == 1
    )


def _transposed(ctx: ModuleContext, expr: ast.expr, hops: int) -> ast.expr | None:
    """The transpose `expr` derives from through slices, element-wise calls and single
    reaching bindings, or None."""
    if hops > _MAX_HOPS:
        return None
    if isinstance(expr, ast.Subscript):
        return _transposed(ctx, expr.value, hops + 1)
    if isinstance(expr, ast.Name):
        value = ctx.flow.reaching(expr)
        return None if value is None else _transposed(ctx, value, hops + 1)
    if isinstance(expr, ast.Attribute):
        return expr if expr.attr in _TRANSPOSED_ATTRIBUTES else None
    if isinstance(expr, ast.Compare) and len(expr.comparators) == 1:
        return _transposed(ctx, expr.left, hops + 1)
    if not (isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute)):
        return None
    if expr.func.attr in _TRANSPOSES and ctx.flow.qualname_of(expr) is None:
        return expr
    if expr.func.attr in _KEEP_STRIDES:
        return _transposed(ctx, expr.func.value, hops + 1)
    return None
