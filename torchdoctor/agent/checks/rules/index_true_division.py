"""index-true-division: indices divided with `/`, a float where a row or ancestor index is meant."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_scope
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import terminal_name
from torchdoctor.agent.models import Severity

# calls whose result (or second result) holds integer positions
_INDEX_CALLS = frozenset(
    {"argmax", "argmin", "argsort", "multinomial", "nonzero", "searchsorted", "bucketize"}
)
_VALUES_AND_INDICES = frozenset({"topk", "sort", "max", "min", "kthvalue", "mode"})
# wrappers that bring a quotient back to an integer: the division was meant as is
Binding = tuple[ast.expr, int | None]
_DIVISIONS = frozenset({"div", "divide", "true_divide"})
_CASTS = frozenset({"int", "floor", "ceil", "round", "trunc", "long", "to", "type", "floor_"})


class IndexTrueDivision(Rule):
    """Detects integer positions divided with true division `/` where an integer row,
    column or ancestor is meant: indices from `topk`/`argmax`/`argsort`/`multinomial`/
    `sort(...)[1]` divided by a size (`backpointer = beam_indices / per_node_beam_size`,
    `row = flat_idx / width`), and `a / b` paired with `a % b` in the same function where the
    quotient then indexes something (`row, col = k / w, k % w` ... `grid[row, col]`). Also
    `torch.div(indices, k)` and `indices.div(k)` without `rounding_mode`, the same true
    division (the spelling code takes when silencing PyTorch 1.5's `/` deprecation warning).

    Why it matters: `/` is true division. On an integer tensor it returns floats since
    PyTorch 1.5 (before, it floored with a warning), and on Python or NumPy ints since
    Python 3: the ancestor of a beam, the row of a flattened position, is fractional.
    Indexing with it raises ("tensors used as indices must be long"), and code that casts it
    back somewhere later picks wrong rows once the division is not exact. kdexd/virtex fixed
    exactly this in its beam search (`648fd67`: `restricted_beam_indices /
    self.per_node_beam_size` -> `//`); beam searches ported from PyTorch < 1.5 and
    unravelling code of the Python 2 era carry it.

    Not reported: `//`, `torch.div(..., rounding_mode=...)`, quotients wrapped in
    `int()`/`math.floor()`/`.long()`/`.to(...)`, divisions by a float, names with a binding
    that is not an index (`idx = idx.float()`), a `/` and `%` pair whose quotient indexes
    nothing (a time split into minutes and seconds for a log line).

    Example:
        _, beam_idx = scores.view(batch, -1).topk(beam_size)
        backpointer = beam_idx / vocab_size

    Fix: floor division: `beam_idx // vocab_size` (or `torch.div(beam_idx, vocab_size,
    rounding_mode="floor")`).
    """

    id = "index-true-division"
    point = 1
    severity = Severity.HIGH
    title = "Indices divided with true division"
    items: ClassVar[tuple[str, ...]] = ("1.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.BinOp, ast.Call)
    call_names: ClassVar[frozenset[str]] = _DIVISIONS
    triggers = Triggers((*sorted(_INDEX_CALLS | _VALUES_AND_INDICES), "%"))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        if isinstance(node, ast.Call):
            self._visit_division_call(node, ctx)
            return
        assert isinstance(node, ast.BinOp)
        if not isinstance(node.op, ast.Div) or _float_divisor(node.right) or _cast(ctx, node):
            return
        scope: ast.AST = ctx.enclosing_function(node) or ctx.tree
        source = _index_source(ctx, node.left, scope)
        if source is not None:
            why = f"`{ast.unparse(node.left)}` holds integer positions (`{source}`)"
        elif _modulo_pair(ctx, node, scope) and _indexes(ctx, node, scope):
            why = (
                f"it is paired with `{ast.unparse(node.left)} % {ast.unparse(node.right)}` "
                "and the quotient indexes"
            )
        else:
            return
        ctx.report(
            self,
            node,
            f"`{ast.unparse(node)}` uses true division: {why}, but `/` gives floats (on "
            "integer tensors since PyTorch 1.5, on ints in Python 3), so the row or ancestor "
            "it computes is fractional and indexing with it fails or picks wrong rows. Use "
            "`//` (or `torch.div(..., rounding_mode='floor')`).",
        )

    def _visit_division_call(self, node: ast.Call, ctx: ModuleContext) -> None:
        """`torch.div(idx, k)` / `idx.div(k)` without `rounding_mode`: true division too."""
        if terminal_name(node.func) not in _DIVISIONS or any(
            k.arg == "rounding_mode" for k in node.keywords
        ):
            return
        qualified = ctx.call_qualname(node) or ""
        if qualified.startswith("torch."):
            operands = list(node.args[:2])
        elif isinstance(node.func, ast.Attribute):
            operands = [node.func.value, *node.args[:1]]
        else:
            return
        if len(operands) != 2 or _float_divisor(operands[1]) or _cast(ctx, node):
            return
        scope: ast.AST = ctx.enclosing_function(node) or ctx.tree
        source = _index_source(ctx, operands[0], scope)
        if source is None:
            return
        ctx.report(
            self,
            node,
            f"`{ast.unparse(node)}` divides `{ast.unparse(operands[0])}`, which holds integer "
            f"positions (`{source}`), with no rounding_mode: that is true division, floats "
            "since PyTorch 1.5, so the row or ancestor it computes is fractional. Pass "
            "`rounding_mode='floor'` (or use `//`).",
        )


def _float_divisor(divisor: ast.expr) -> bool:
    return isinstance(divisor, ast.Constant) and isinstance(divisor.value, float)


def _cast(ctx: ModuleContext, node: ast.expr) -> bool:
    """The quotient is brought back to an integer where it is taken (`int(a / b)`,
    `(a / b).long()`, `math.floor(a / b)`)."""
    parent = ctx.parents.get(node)
    if isinstance(parent, ast.Call) and node in parent.args:
        return terminal_name(parent.func) in _CASTS
    if isinstance(parent, ast.Attribute) and parent.attr in _CASTS:
        return isinstance(ctx.parents.get(parent), ast.Call)
    return False


def _index_source(ctx: ModuleContext, value: ast.expr, scope: ast.AST) -> str | None:
    """The index-producing expression `value` is or every binding of the name holds."""
    if isinstance(value, ast.Name):
        bindings = _scope_bindings(ctx, scope).get(value.id, [])
        sources = [_bound_index(v, position) for v, position in bindings]
        if not sources or any(s is None for s in sources):
            return None
        return sources[0]
    return _bound_index(value, None)


def _scope_bindings(ctx: ModuleContext, scope: ast.AST) -> dict[str, list[Binding]]:
    """name -> (value, position in an unpacked tuple or None) of each binding in `scope`,
    built once per scope; a binding that is no plain assignment (loop target, augmented,
    parameter) gives the target itself, which is no index source."""
    memo = ctx.memo_table("index-true-division.bindings")
    kept: dict[str, list[Binding]] | None = memo.get(id(scope))
    if kept is not None:
        return kept
    found: dict[str, list[Binding]] = {}
    for inner in walk_scope(scope):
        if isinstance(inner, ast.Assign):
            for target in inner.targets:
                if isinstance(target, ast.Name):
                    found.setdefault(target.id, []).append((inner.value, None))
                elif isinstance(target, ast.Tuple):
                    for position, element in enumerate(target.elts):
                        if isinstance(element, ast.Name):
                            found.setdefault(element.id, []).append((inner.value, position))
        elif isinstance(inner, ast.AugAssign | ast.For | ast.AnnAssign | ast.NamedExpr):
            for t in ast.walk(inner.target):
                if isinstance(t, ast.Name):
                    found.setdefault(t.id, []).append((t, None))
        elif isinstance(inner, ast.arg):
            found.setdefault(inner.arg, []).append((ast.Name(id=inner.arg), None))
    memo[id(scope)] = found
    return found


def _bound_index(value: ast.expr, position: int | None) -> str | None:
    """`value` (or its element `position`) holds integer positions: `x.argmax(...)`,
    `torch.topk(...)` unpacked second, `x.topk(k)[1]`, `x.sort(...).indices`."""
    if isinstance(value, ast.Subscript) and position is None:
        if isinstance(value.slice, ast.Constant) and value.slice.value == 1:
            return _bound_index(value.value, 1)
        return None
    if isinstance(value, ast.Attribute) and value.attr == "indices" and position is None:
        return _bound_index(value.value, 1)
    if not isinstance(value, ast.Call):
        return None
    name = terminal_name(value.func)
    if name in _INDEX_CALLS and position is None:
        return f"{name}(...)"
    if name in _VALUES_AND_INDICES and position == 1:
        if name in ("max", "min") and not (value.args[1:] or _has_dim(value)):
            return None  # max(x) without a dim gives no indices
        return f"{name}(...)[1]"
    return None


def _has_dim(call: ast.Call) -> bool:
    if isinstance(call.func, ast.Attribute) and call.args:
        return True  # x.max(1)
    return any(k.arg == "dim" for k in call.keywords)


def _modulo_pair(ctx: ModuleContext, node: ast.BinOp, scope: ast.AST) -> bool:
    """`a % b` with the same operands somewhere in the scope (the pairs built once per
    scope)."""
    memo = ctx.memo_table("index-true-division.modulo")
    pairs: set[tuple[str, str]] | None = memo.get(id(scope))
    if pairs is None:
        pairs = memo[id(scope)] = {
            (ast.dump(other.left), ast.dump(other.right))
            for other in walk_scope(scope)
            if isinstance(other, ast.BinOp) and isinstance(other.op, ast.Mod)
        }
    return (ast.dump(node.left), ast.dump(node.right)) in pairs


def _indexes(ctx: ModuleContext, node: ast.BinOp, scope: ast.AST) -> bool:
    """The quotient is a subscript's index, directly or through the name it is bound to."""
    names: set[str] = set()
    current: ast.AST = node
    parent = ctx.parents.get(current)
    while isinstance(parent, ast.Tuple):
        current, parent = parent, ctx.parents.get(parent)
    if isinstance(parent, ast.Subscript) and parent.slice is current:
        return True
    if isinstance(parent, ast.Assign):
        for target in parent.targets:
            if isinstance(target, ast.Name) and current is node:
                names.add(target.id)
            elif isinstance(target, ast.Tuple) and isinstance(current, ast.Tuple):
                position = current.elts.index(node) if node in current.elts else -1
                if 0 <= position < len(target.elts):
                    element = target.elts[position]
                    if isinstance(element, ast.Name):
                        names.add(element.id)
    if not names:
        return False
    return any(
        isinstance(inner, ast.Subscript)
        and any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(inner.slice))
        for inner in walk_scope(scope)
    )
