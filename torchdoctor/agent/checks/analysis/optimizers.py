"""Which models an optimizer trains: the owners of the parameters it was built over.

`torch.optim.Adam(filter(lambda p: p.requires_grad, self.G.parameters()))` trains `self.G`
as surely as `Adam(self.G.parameters())`; rules that ask which model a step updates (a loss
that reaches it only through a cut, a loss of another model) read the `params` argument
through the wrappers that only order or filter it.
"""

from __future__ import annotations

import ast
from collections.abc import Callable

_ORDER_ONLY = frozenset({"list", "tuple", "iter", "filter"})


def model_key(expr: ast.expr) -> str | None:
    """What a model is known by: `D_LR` for `D_LR`, `model.module.enc` or `models[0]`;
    `self.netD` for `self.netD.encoder`."""
    root = model_root(expr)
    return ast.unparse(root) if root is not None else None


def model_root(expr: ast.expr) -> ast.Name | ast.Attribute | None:
    """The name (or `self.x`) a model expression starts from."""
    chain: list[ast.expr] = []
    node = expr
    while isinstance(node, ast.Attribute | ast.Subscript):
        chain.append(node)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    if node.id == "self":
        first = chain[-1] if chain else None
        return first if isinstance(first, ast.Attribute) else None
    return node


def parameter_owners(
    expr: ast.expr, key: Callable[[ast.expr], str | None] | None = None
) -> set[str] | None:
    """The models whose parameters an optimizer's `params` holds: `m.parameters()`,
    `itertools.chain(a.parameters(), b.parameters())`, `list(a.parameters()) + [...]`,
    `[{"params": a.parameters()}, ...]`; None for anything else. Each model is named by
    `key` (by default `model_key`: `self.netD` for `self.netD.encoder.parameters()`)."""
    name_of = key if key is not None else model_key
    if isinstance(expr, ast.Call):
        func = expr.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name == "parameters" and isinstance(func, ast.Attribute) and not expr.args:
            owner = name_of(func.value)
            return {owner} if owner is not None else None
        if name == "chain" or name in _ORDER_ONLY:
            parts = expr.args[-1:] if name == "filter" else expr.args
            return _union(parts, name_of)
        return None
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
        return _union([expr.left, expr.right], name_of)
    if isinstance(expr, ast.List | ast.Tuple):
        return _union(expr.elts, name_of)
    if isinstance(expr, ast.Dict):
        for field, value in zip(expr.keys, expr.values, strict=True):
            if isinstance(field, ast.Constant) and field.value == "params":
                return parameter_owners(value, name_of)
        return None
    return None


def _union(parts: list[ast.expr], key: Callable[[ast.expr], str | None]) -> set[str] | None:
    if not parts:
        return None
    found: set[str] = set()
    for part in parts:
        owners = parameter_owners(part, key)
        if owners is None:
            return None
        found |= owners
    return found
