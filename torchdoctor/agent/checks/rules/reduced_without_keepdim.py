"""reduced-without-keepdim: a tensor combined with its own reduction over a later dimension,
taken without `keepdim=True`."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.defuse import kwarg
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import argument, constant_int
from torchdoctor.agent.models import Severity

# Reductions that drop the reduced dimension unless told to keep it; `max`/`min` give
# (values, indices) with a dim, read through `[0]` or `.values`.
_REDUCTIONS = frozenset(
    {"mean", "sum", "std", "var", "amax", "amin", "logsumexp", "nanmean", "nansum", "prod"}
)
_PAIRED = frozenset({"max", "min", "median"})
_ARITHMETIC = (ast.Sub, ast.Add, ast.Div, ast.Mult)
# Steps that keep the shape of the reduction (`torch.mean(h, dim=2).to(h.device)`).
_KEEPS_SHAPE = frozenset(
    {"to", "float", "double", "half", "detach", "clone", "cuda", "cpu", "type_as", "contiguous"}
)
_MAX_HOPS = 4


class ReducedWithoutKeepdim(Rule):
    """Detects arithmetic (`-`, `+`, `*`, `/`) between a tensor and its own reduction over a
    dimension after the first (`mean`, `sum`, `std`, `var`, `amax`, `logsumexp`, the values
    of `max`/`min`), taken without `keepdim=True`: `h - torch.mean(h, dim=2)`, `x /
    x.sum(1)`, or through a name the reduction is bound to (`avg = torch.mean(h,
    dim=2).to(h.device)`, then `h = h - avg`).

    Why it matters: the reduction drops the dimension, so broadcasting lines its remaining
    dimensions up against the wrong axes of the tensor (a (batch, channels) mean against the
    (channels, time) tail of a (batch, channels, time) feature map). It raises when the sizes
    differ, and silently subtracts the wrong statistics when they happen to match (a square
    adjacency matrix divided by `adj.sum(1)` is normalised by columns, not rows). PASE's
    `select_output` subtracted `torch.mean(h, dim=2)` until `916f77b`.

    Not reported: a reduction over dim 0 (it broadcasts back correctly), over a negative or
    computed dimension (a 1-D tensor reduced over -1 is a scalar), with `keepdim=True` or a
    `keepdim` given by a variable (NumPy's `keepdims=True` too), a reduction re-expanded
    (`.unsqueeze(2)`, `[..., None]`, `.view(...)`) before the arithmetic, and a reduction of
    another tensor or of the same name bound to another value.

    Example:
        def select_output(h):
            return h - torch.mean(h, dim=2)

    Fix: `torch.mean(h, dim=2, keepdim=True)` (or `.unsqueeze(2)` on the reduction).
    """

    id = "reduced-without-keepdim"
    point = 3
    severity = Severity.HIGH
    title = "Tensor combined with its own reduction without keepdim"
    items: ClassVar[tuple[str, ...]] = ("3.4",)
    triggers = Triggers(("mean", "sum(", "std(", "var(", "amax(", "logsumexp(", "max(", "min("))

    def finish(self, ctx: ModuleContext) -> None:
        for node in ctx.nodes_by_type().get(ast.BinOp, []):
            if not isinstance(node, ast.BinOp) or not isinstance(node.op, _ARITHMETIC):
                continue
            for tensor, other in ((node.left, node.right), (node.right, node.left)):
                found = _reduction_of(ctx, tensor, other, 0)
                if found is None:
                    continue
                reduction, dim = found
                ctx.report(
                    self,
                    node,
                    f"`{ast.unparse(tensor)}` is combined with its own `{_name(reduction)}` "
                    f"over dim {dim} (line {reduction.lineno}) taken without keepdim=True: the "
                    "reduced dimension is dropped, so broadcasting aligns the result with the "
                    f"wrong axes; pass keepdim=True (or unsqueeze({dim}) the reduction)",
                    data={"dim": dim},
                )
                break


def _name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else ast.unparse(func)


def _reduction_of(
    ctx: ModuleContext, tensor: ast.expr, expr: ast.expr, hops: int
) -> tuple[ast.Call, int] | None:
    """The reduction of `tensor` over a dim >= 1 without keepdim that `expr` holds, seen
    through shape-keeping calls and a name bound once."""
    if hops > _MAX_HOPS:
        return None
    if isinstance(expr, ast.Name):
        values = ctx.flow.reaching_or_all(expr)
        return _reduction_of(ctx, tensor, values[0], hops + 1) if len(values) == 1 else None
    if isinstance(expr, ast.Subscript):  # `x.max(1)[0]`: the values of a paired reduction
        index = expr.slice
        if constant_int(index) == 0 and isinstance(expr.value, ast.Call):
            return _checked(ctx, tensor, expr.value, paired=True)
        return None
    if isinstance(expr, ast.Attribute) and expr.attr == "values":
        return (
            _checked(ctx, tensor, expr.value, paired=True)
            if isinstance(expr.value, ast.Call)
            else None
        )
    if not isinstance(expr, ast.Call) or not isinstance(expr.func, ast.Attribute):
        return None
    if expr.func.attr in _KEEPS_SHAPE and ctx.qualname(expr.func) is None:
        return _reduction_of(ctx, tensor, expr.func.value, hops + 1)
    return _checked(ctx, tensor, expr, paired=False)


def _checked(
    ctx: ModuleContext, tensor: ast.expr, call: ast.Call, *, paired: bool
) -> tuple[ast.Call, int] | None:
    func = call.func
    if not isinstance(func, ast.Attribute):
        return None
    names = _PAIRED if paired else _REDUCTIONS
    if func.attr not in names:
        return None
    qual = ctx.qualname(func)
    if qual is not None and qual != f"torch.{func.attr}":
        return None  # `np.mean(...)` spells its dimension `axis`; another library's function
    receiver, offset = (call.args[0], 1) if qual else (func.value, 0)
    if qual and not call.args:
        return None
    keep = kwarg(call, "keepdim") or kwarg(call, "keepdims")  # NumPy spells it `keepdims`
    if keep is not None or (len(call.args) > offset + 1):
        return None  # keepdim given (by keyword or position), whatever its value
    dim = constant_int(argument(call, "dim", offset))
    if dim is None or dim < 1:
        return None
    if not _same_value(ctx, tensor, receiver):
        return None
    return call, dim


def _same_value(ctx: ModuleContext, a: ast.expr, b: ast.expr) -> bool:
    """`a` and `b` spell the same name or attribute, bound to the same values where read."""
    if not isinstance(a, ast.Name | ast.Attribute) or ast.dump(a) != ast.dump(b):
        return False
    if isinstance(a, ast.Name) and isinstance(b, ast.Name):
        if ctx.enclosing_function(a) is not ctx.enclosing_function(b):
            return False
        first, second = ctx.flow.reaching(a), ctx.flow.reaching(b)
        if first is not None and second is not None:
            return first is second
        # a parameter, or a name bound on several paths: no binding between the two reads
        low, high = sorted((a.lineno, b.lineno))
        return not any(low < v.lineno < high for v in ctx.flow.definitions(a))
    return ctx.enclosing_function(a) is ctx.enclosing_function(b)
