"""layer-size-true-division: a layer's size computed with `/`, a float where an int is needed."""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_scope
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import argument, kwarg
from torchdoctor.agent.models import Severity

# layer -> (position, keyword) of its integer sizes
_CONV = ((0, "in_channels"), (1, "out_channels"), (2, "kernel_size"))
_RNN = ((0, "input_size"), (1, "hidden_size"), (2, "num_layers"))
_NORM = ((0, "num_features"),)
_SIZES: dict[str, tuple[tuple[int, str], ...]] = {
    "Linear": ((0, "in_features"), (1, "out_features")),
    "Bilinear": ((0, "in1_features"), (1, "in2_features"), (2, "out_features")),
    "LazyLinear": ((0, "out_features"),),
    "Conv1d": _CONV, "Conv2d": _CONV, "Conv3d": _CONV,
    "ConvTranspose1d": _CONV, "ConvTranspose2d": _CONV, "ConvTranspose3d": _CONV,
    "Embedding": ((0, "num_embeddings"), (1, "embedding_dim")),
    "EmbeddingBag": ((0, "num_embeddings"), (1, "embedding_dim")),
    "LSTM": _RNN, "GRU": _RNN, "RNN": _RNN,
    "LSTMCell": _RNN[:2], "GRUCell": _RNN[:2], "RNNCell": _RNN[:2],
    "BatchNorm1d": _NORM, "BatchNorm2d": _NORM, "BatchNorm3d": _NORM,
    "InstanceNorm1d": _NORM, "InstanceNorm2d": _NORM, "InstanceNorm3d": _NORM,
    "LayerNorm": ((0, "normalized_shape"),),
    "GroupNorm": ((0, "num_groups"), (1, "num_channels")),
    "MultiheadAttention": ((0, "embed_dim"), (1, "num_heads")),
    "TransformerEncoderLayer": ((0, "d_model"), (1, "nhead"), (2, "dim_feedforward")),
    "TransformerDecoderLayer": ((0, "d_model"), (1, "nhead"), (2, "dim_feedforward")),
}  # fmt: skip
_TENSOR_FACTORIES = frozenset({"zeros", "ones", "empty", "rand", "randn", "full"})
_DEPTH = 4


class LayerSizeTrueDivision(Rule):
    """Detects a `torch.nn` layer given a size computed with true division `/`, directly or
    through a local name or `self.` attribute every assignment of which divides:
    `nn.Linear(hidden, hidden / 2)`, `self.d_k = d_model / n_heads` then `nn.Linear(d_model,
    n_heads * self.d_k)`, `nn.Conv2d(c, c / 4, 1)`, `nn.Embedding(vocab, dim / 2)`.

    Why it matters: `/` always gives a float in Python 3, even between two ints that divide
    exactly, and layers build their weights from integer sizes: constructing the layer raises
    `TypeError: empty(): argument 'size' ... must be tuple of ints`. Code from the Python 2
    era, where `/` floored ints, and code that divides a width by a head count meet it first.
    sooftware/kospeech fixed exactly this (`20c89a2`: `d_k = d_model / num_heads` ->
    `int(d_model / num_heads)` before `nn.Linear(d_model, num_heads * self.d_k)`).

    Also reported: a tensor factory's shape computed the same way (`torch.zeros(size / 2,
    size)`, `torch.full((h / 2, w), 0.0)`), which raises the same way.

    Not reported: `//`, sizes wrapped in `int()`/`round()`/`math.ceil()`, names with an
    integer assignment anywhere in their scope, parameters (their type is unknown here),
    float arguments that are not sizes (`nn.Dropout(p / 2)`, `Upsample(scale_factor=...)`).

    Example:
        self.d_k = d_model / num_heads
        self.w_qs = nn.Linear(d_model, num_heads * self.d_k)

    Fix: floor division: `self.d_k = d_model // num_heads` (check divisibility with an
    `assert d_model % num_heads == 0`).
    """

    id = "layer-size-true-division"
    point = 1
    severity = Severity.HIGH
    title = "Layer size computed with true division"
    items: ClassVar[tuple[str, ...]] = ("1.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset(_SIZES) | _TENSOR_FACTORIES
    triggers = Triggers(tuple(sorted({*_SIZES, *_TENSOR_FACTORIES})))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        qualified = ctx.call_qualname(node)
        if qualified is None:
            return
        factory = qualified.removeprefix("torch.")
        if factory in _TENSOR_FACTORIES:
            self._check_tensor_sizes(ctx, node, factory)
            return
        if not qualified.startswith("torch.nn."):
            return
        layer = qualified.rsplit(".", 1)[-1]
        for position, keyword in _SIZES.get(layer, ()):
            size = argument(node, keyword, position)
            if size is None:
                continue
            division = _float_source(ctx, size, node, _DEPTH)
            if division is None:
                continue
            self._report(
                ctx,
                size,
                division,
                f"`{layer}`'s `{keyword}`",
                "layers need integer sizes, and building this one raises a TypeError",
            )
            return

    def _report(
        self, ctx: ModuleContext, size: ast.expr, division: ast.expr, what: str, why: str
    ) -> None:
        where = "" if division is size else f" (`{ast.unparse(division)}`, line {division.lineno})"
        ctx.report(
            self,
            size,
            f"{what} is `{ast.unparse(size)}`, a float from true division{where}: {why}. "
            "Use `//` (or `int(...)`).",
        )

    def _check_tensor_sizes(self, ctx: ModuleContext, call: ast.Call, factory: str) -> None:
        """`torch.zeros(n / 2, m)`, `torch.full((h / 2, w), 0.0)`: a tensor's shape."""
        given = call.args[:1] if factory == "full" else list(call.args)
        size = kwarg(call, "size")
        if size is not None:
            given.append(size)
        if len(given) == 1 and isinstance(given[0], ast.Tuple | ast.List):
            given = list(given[0].elts)
        for size in given:
            division = _float_source(ctx, size, call, _DEPTH)
            if division is None:
                continue
            self._report(
                ctx,
                size,
                division,
                f"`torch.{factory}`'s size",
                "tensor shapes need integers, and this call raises a TypeError",
            )
            return


def _float_source(ctx: ModuleContext, expr: ast.expr, site: ast.AST, depth: int) -> ast.expr | None:
    """The true division (or float literal) that makes `expr` a float, or None."""
    if depth < 0:
        return None
    if isinstance(expr, ast.BinOp):
        if isinstance(expr.op, ast.Div):
            return expr
        if isinstance(expr.op, ast.Add | ast.Sub | ast.Mult):
            return _float_source(ctx, expr.left, site, depth - 1) or _float_source(
                ctx, expr.right, site, depth - 1
            )
        return None
    if isinstance(expr, ast.Constant):
        return expr if isinstance(expr.value, float) else None
    if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.USub):
        return _float_source(ctx, expr.operand, site, depth - 1)
    values = _assigned_values(ctx, expr, site)
    if not values:
        return None
    sources = [_float_source(ctx, value, site, depth - 1) for value in values]
    if any(source is None for source in sources):
        return None
    return sources[0]


def _assigned_values(ctx: ModuleContext, expr: ast.expr, site: ast.AST) -> list[ast.expr]:
    """Every value assigned to the name (in the enclosing function, else at module level) or
    `self.` attribute (anywhere in the enclosing class) `expr` reads; [] when one of them is
    not a plain assignment (augmented, unpacked, a loop target) or none is seen."""
    values: list[ast.expr] = []
    if isinstance(expr, ast.Name):
        function = ctx.enclosing_function(site)
        if function is not None and any(
            isinstance(a, ast.arg) and a.arg == expr.id for a in ast.walk(function.args)
        ):
            return []
        for scope in (function, ctx.tree):
            if scope is None:
                continue
            found = _name_bindings(ctx, scope).get(expr.id)
            if found:
                if any(value is None for value in found):
                    return []
                return [value for value in found if value is not None]
        return values
    if (
        isinstance(expr, ast.Attribute)
        and isinstance(expr.value, ast.Name)
        and expr.value.id == "self"
    ):
        cls = ctx.enclosing_class(site)
        if cls is None:
            return []

        def wanted(target: ast.AST) -> bool:
            return (
                isinstance(target, ast.Attribute)
                and target.attr == expr.attr
                and isinstance(target.value, ast.Name)
                and target.value.id == "self"
            )

        for inner in ast.walk(cls):
            if not _binds(inner, wanted):
                continue
            value = _plain_value(inner, wanted)
            if value is None:
                return []
            values.append(value)
    return values


def _name_bindings(ctx: ModuleContext, scope: ast.AST) -> dict[str, list[ast.expr | None]]:
    """Name -> the values the scope assigns it (None for an augmented, unpacking, loop or
    walrus binding), built once per scope and module: sizes ask it of every factory call."""
    memo = ctx.memo_table("layer_size_true_division.bindings")
    found: dict[str, list[ast.expr | None]] | None = memo.get(id(scope))
    if found is None:
        found = {}
        for inner in walk_scope(scope):
            if isinstance(inner, ast.Assign):
                targets: list[ast.AST] = list(inner.targets)
            elif isinstance(
                inner, ast.AugAssign | ast.AnnAssign | ast.For | ast.comprehension | ast.NamedExpr
            ):
                targets = [inner.target]
            else:
                continue
            value = (
                inner.value
                if isinstance(inner, ast.Assign | ast.AnnAssign)
                and all(isinstance(t, ast.Name) for t in targets)
                else None
            )
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        found.setdefault(name.id, []).append(value)
        memo[id(scope)] = found
    return found


def _binds(node: ast.AST, wanted: Callable[[ast.AST], bool]) -> bool:
    """Whether `node` stores into a target `wanted` accepts (anywhere in its targets)."""
    if isinstance(node, ast.Assign):
        targets: list[ast.AST] = list(node.targets)
    elif isinstance(
        node, ast.AugAssign | ast.AnnAssign | ast.For | ast.comprehension | ast.NamedExpr
    ):
        targets = [node.target]
    else:
        return False
    return any(wanted(t) for target in targets for t in ast.walk(target))


def _plain_value(node: ast.AST, wanted: Callable[[ast.AST], bool]) -> ast.expr | None:
    """The value of `target = value` (or `target: T = value`) when `node` is that; None for
    augmented, unpacking, loop and walrus bindings."""
    if isinstance(node, ast.Assign) and all(wanted(t) for t in node.targets):
        return node.value
    if isinstance(node, ast.AnnAssign) and node.value is not None:
        return node.value
    return None
