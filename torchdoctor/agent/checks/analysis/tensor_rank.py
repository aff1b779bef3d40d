"""How many dimensions a tensor has, where the code fixes it: a `view`/`reshape` given its
sizes, a flatten, a factory given its sizes, and what keeps the rank on the way (elementwise
functions, `nn.Linear` and other rank-keeping layers, a local model whose `forward` returns
such a value). `x = x.view(-1, 320); x = self.fc2(F.relu(self.fc1(x)))` is 2-D; a function's
parameter, or anything else, is unknown (None).
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

from torchdoctor.agent.checks.analysis.vocabulary import RANK_KEEPING_FUNCTIONS, RANK_KEEPING_LAYERS
from torchdoctor.agent.checks.loops import walk_scope

if TYPE_CHECKING:
    from torchdoctor.agent.checks.base import ModuleContext

_MAX_DEPTH = 24
_RESHAPING_METHODS = frozenset({"view", "reshape"})
_RANK_KEEPING_METHODS = frozenset(
    {
        "float", "double", "half", "bfloat16", "to", "cuda", "cpu", "detach", "clone",
        "contiguous", "relu", "sigmoid", "tanh", "exp", "log", "abs", "neg", "clamp",
        "type_as", "masked_fill", "view_as", "reshape_as", "pow", "sqrt",
    }
)  # fmt: skip
_ONE_DIMENSIONAL = frozenset({"torch.arange", "torch.linspace", "torch.logspace", "torch.randperm"})
_SIZED_FACTORIES = frozenset(
    f"torch.{name}" for name in ("zeros", "ones", "empty", "rand", "randn", "full")
)


def tensor_rank(ctx: ModuleContext, expr: ast.expr) -> int | None:
    """The number of dimensions of `expr` when the code fixes it, else None (asked once per
    expression: a name rebound along a forward is reached from each later read)."""
    return _rank(ctx, expr, 0)


def _rank(ctx: ModuleContext, expr: ast.expr, depth: int) -> int | None:
    if depth > _MAX_DEPTH:
        return None
    memo = ctx.memo_table("tensor_rank")
    if id(expr) not in memo:
        memo[id(expr)] = None  # a value that reaches itself (`x = x + 1` in a loop): unknown
        memo[id(expr)] = _rank_uncached(ctx, expr, depth)
    rank = memo[id(expr)]
    return rank if isinstance(rank, int) else None


def _rank_uncached(ctx: ModuleContext, expr: ast.expr, depth: int) -> int | None:
    if isinstance(expr, ast.Name):
        return _agreed(ctx, ctx.flow.reaching_or_all(expr), depth)
    if isinstance(expr, ast.UnaryOp):
        return _rank(ctx, expr.operand, depth + 1)
    if isinstance(expr, ast.IfExp):
        return _agreed(ctx, [expr.body, expr.orelse], depth)
    if isinstance(expr, ast.BinOp) and not isinstance(expr.op, ast.MatMult):
        return _broadcast(ctx, expr, depth)
    if isinstance(expr, ast.Subscript):
        return _indexed(ctx, expr, depth)
    if isinstance(expr, ast.Call):
        return _call_rank(ctx, expr, depth)
    return None


def _agreed(ctx: ModuleContext, values: list[ast.expr], depth: int) -> int | None:
    """The rank every one of `values` has, when they agree."""
    ranks = {_rank(ctx, v, depth + 1) for v in values}
    return ranks.pop() if len(ranks) == 1 else None


def _broadcast(ctx: ModuleContext, expr: ast.BinOp, depth: int) -> int | None:
    """`x * 0.5`, `x + bias`: the larger rank of the operands (a number has none)."""
    ranks = []
    for side in (expr.left, expr.right):
        if isinstance(side, ast.Constant) and isinstance(side.value, int | float):
            continue
        rank = _rank(ctx, side, depth + 1)
        if rank is None:
            return None
        ranks.append(rank)
    return max(ranks) if ranks else None


def _indexed(ctx: ModuleContext, expr: ast.Subscript, depth: int) -> int | None:
    """`out[:, -1]` drops one axis per integer index and keeps one per slice."""
    rank = _rank(ctx, expr.value, depth + 1)
    if rank is None:
        return None
    parts = expr.slice.elts if isinstance(expr.slice, ast.Tuple) else [expr.slice]
    dropped = 0
    for part in parts:
        if isinstance(part, ast.Slice):
            continue
        if isinstance(part, ast.Constant) and isinstance(part.value, int):
            dropped += 1
        elif isinstance(part, ast.UnaryOp) and isinstance(part.operand, ast.Constant):
            dropped += 1  # a negative index
        else:
            return None  # a tensor index, None, an ellipsis: the rank depends on values
    return rank - dropped if len(parts) <= rank else None


def _call_rank(ctx: ModuleContext, call: ast.Call, depth: int) -> int | None:
    func = call.func
    qual = ctx.flow.qualname_of(call)
    # `x.view(...)` is a tensor's method; `self.flatten(x)` calls a layer of the model
    if (
        qual is None
        and isinstance(func, ast.Attribute)
        and not (isinstance(func.value, ast.Name) and func.value.id == "self")
    ):
        if func.attr in _RESHAPING_METHODS:
            return _sizes_rank(call.args) if not call.keywords else None
        if func.attr == "flatten":
            return _flattened(ctx, func.value, call.args, call.keywords, depth)
        if func.attr == "unsqueeze":
            rank = _rank(ctx, func.value, depth + 1)
            return None if rank is None else rank + 1
        if func.attr in _RANK_KEEPING_METHODS:
            return _rank(ctx, func.value, depth + 1)
    if qual is not None:
        if qual in _ONE_DIMENSIONAL:
            return 1
        if qual in _SIZED_FACTORIES and qual != "torch.full":
            return _sizes_rank(call.args)
        if qual == "torch.full" and call.args:
            return _sizes_rank(call.args[:1]) if isinstance(call.args[0], ast.Tuple) else None
        if qual == "torch.reshape" and len(call.args) == 2:
            return _sizes_rank(call.args[1:])
        if qual == "torch.flatten" and call.args:
            return _flattened(ctx, call.args[0], call.args[1:], call.keywords, depth)
        if qual in RANK_KEEPING_FUNCTIONS and call.args:
            return _rank(ctx, call.args[0], depth + 1)
        return None
    return _module_output_rank(ctx, call, depth)


def _sizes_rank(sizes: list[ast.expr]) -> int | None:
    """The rank `view`/`reshape`/a factory gives: one per size (`view(-1, 320)`), or the
    length of one literal sequence of sizes (`view((b, -1))`); a lone name may be a shape."""
    if any(isinstance(s, ast.Starred) for s in sizes) or not sizes:
        return None
    if len(sizes) == 1:
        only = sizes[0]
        if isinstance(only, ast.Tuple | ast.List):
            return None if any(isinstance(e, ast.Starred) for e in only.elts) else len(only.elts)
        if isinstance(only, ast.Constant) and isinstance(only.value, int):
            return 1
        if isinstance(only, ast.UnaryOp) and isinstance(only.operand, ast.Constant):
            return 1  # view(-1)
        return None
    return len(sizes)


def _flattened(
    ctx: ModuleContext,
    tensor: ast.expr,
    args: list[ast.expr],
    keywords: list[ast.keyword],
    depth: int,
) -> int | None:
    """`flatten(start_dim)` with the default end: start_dim + 1 axes (`x.flatten(1)`: 2)."""
    start: ast.expr | None = args[0] if args else None
    for keyword in keywords:
        if keyword.arg == "start_dim":
            start = keyword.value
        else:
            return None  # an end_dim: the rank depends on the input's
    if len(args) > 1:
        return None
    if start is None:
        return 1
    if isinstance(start, ast.Constant) and isinstance(start.value, int) and start.value >= 0:
        rank = _rank(ctx, tensor, depth + 1)
        return start.value + 1 if rank is None or rank > start.value else None
    return None


def _module_output_rank(ctx: ModuleContext, call: ast.Call, depth: int) -> int | None:
    """A layer or model called on a tensor: a rank-keeping layer gives its input's rank,
    `nn.Flatten()` start_dim + 1, an `nn.Sequential` of those folds them, and a local model
    gives what its `forward` returns."""
    built = list(ctx.flow.constructors(call.func))
    if len(built) != 1:
        return None
    layer = built[0]
    if not call.args:
        return None
    return _through_layer(ctx, layer, call.args[0], depth)


def _through_layer(ctx: ModuleContext, layer: ast.Call, value: ast.expr, depth: int) -> int | None:
    qual = ctx.flow.qualname_of(layer) or ""
    if qual in RANK_KEEPING_LAYERS:
        return _rank(ctx, value, depth + 1)
    if qual == "torch.nn.Flatten":
        return _flattened(ctx, value, layer.args[:1] or [ast.Constant(1)], [], depth)
    if qual == "torch.nn.Sequential" and layer.args and isinstance(layer.args[0], ast.Call):
        rank = _through_layer(ctx, layer.args[0], value, depth)
        for inner in layer.args[1:]:
            rank = _after(ctx, inner, rank) if isinstance(inner, ast.Call) else None
        return rank
    if isinstance(layer.func, ast.Name) and layer.func.id in ctx.flow.classes:
        return _forward_rank(ctx, ctx.flow.classes[layer.func.id], depth)
    return None


def _after(ctx: ModuleContext, layer: ast.Call, rank: int | None) -> int | None:
    """The rank after a later layer of an `nn.Sequential`, given the rank before it."""
    qual = ctx.flow.qualname_of(layer) or ""
    if qual in RANK_KEEPING_LAYERS:
        return rank
    if qual == "torch.nn.Flatten":
        start = layer.args[0] if layer.args else ast.Constant(1)
        if isinstance(start, ast.Constant) and isinstance(start.value, int):
            return start.value + 1
    return None


def _forward_rank(ctx: ModuleContext, cls: ast.ClassDef, depth: int) -> int | None:
    """The rank every `return` of the class's `forward` gives, when they agree."""
    forward = next(
        (s for s in cls.body if isinstance(s, ast.FunctionDef) and s.name == "forward"), None
    )
    if forward is None:
        return None
    returns = [
        node.value
        for node in walk_scope(forward.body)
        if isinstance(node, ast.Return) and node.value is not None
    ]
    return _agreed(ctx, returns, depth) if returns else None
