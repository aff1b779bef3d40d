"""`torch.load` inside `with torch.serialization.safe_globals([...])` is a weights-only load.

The allowlist a `safe_globals` block installs is read only by the weights-only unpickler: code
that wraps a load in it loads with `weights_only` (the default since torch 2.6), so neither
the native rule nor a peer should call that load unsafe unless it passes `weights_only=False`.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping


def within_safe_globals(node: ast.AST, parents: Mapping[ast.AST, ast.AST]) -> bool:
    """Whether `node` sits in the body of `with ...safe_globals(...):`."""
    current = parents.get(node)
    while current is not None:
        if isinstance(current, ast.With | ast.AsyncWith) and any(
            isinstance(item.context_expr, ast.Call)
            and _terminal(item.context_expr.func) == "safe_globals"
            for item in current.items
        ):
            return True
        current = parents.get(current)
    return False


def _terminal(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return ""
