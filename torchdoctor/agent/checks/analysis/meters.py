"""Objects that keep what they are given: a meter's `update(val, n)` adding `val` into
`self.sum`. Handing such a method a loss tensor keeps every step's autograd graph alive, as
`total += loss` does; the accumulation only shows inside the class, often in another file."""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

from torchdoctor.agent.checks.loops import walk_scope

if TYPE_CHECKING:
    from torchdoctor.agent.checks.base import ModuleContext

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)

# Calls that turn a tensor into a number or cut its graph before it is kept.
_CUTS = frozenset({"item", "detach", "float", "int", "tolist", "numpy", "cpu"})


def accumulating_methods(ctx: ModuleContext, cls: ast.ClassDef) -> dict[str, ast.FunctionDef]:
    """Methods of `cls` that add their first argument into the object's own state
    (`self.sum += val * n`, `self.total = self.total + val`, `self.values.append(val)`)
    without cutting its graph first (`val.item()`, `float(val)`, `val.detach()`)."""
    found: dict[str, ast.FunctionDef] = {}
    candidates = _updating_scopes(ctx)
    for stmt in cls.body:
        if not isinstance(stmt, ast.FunctionDef) or len(stmt.args.args) < 2:
            continue
        if stmt.name.startswith("__") or id(stmt) not in candidates:
            continue
        if _keeps_uncut(stmt, stmt.args.args[1].arg):
            found[stmt.name] = stmt
    return found


def kept_state(fn: ast.FunctionDef) -> ast.expr | None:
    """The object state an accumulating method adds its first argument into (`self.sum` of
    `self.sum += val * n`, `self.values` of `self.values.append(val)`)."""
    if len(fn.args.args) < 2:
        return None
    param = fn.args.args[1].arg
    for node in walk_scope(fn.body):
        if not _keeps(node, param):
            continue
        if isinstance(node, ast.AugAssign):
            return node.target
        if isinstance(node, ast.Assign):
            return node.targets[0]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            return node.func.value
    return None


def _keeps_uncut(fn: ast.FunctionDef, param: str) -> bool:
    """Some statement keeps `param` (`_keeps`) and none rebinds it: `val = val.item()` /
    `val = float(val)` at the top of the method means what is kept is a number, whatever the
    caller passed. One walk of the body answers both."""
    keeps = False
    for node in walk_scope(fn.body):
        if isinstance(node, ast.Assign):
            if any(isinstance(t, ast.Name) and t.id == param for t in node.targets):
                return False
        elif not isinstance(node, ast.AugAssign | ast.Call):
            continue
        keeps = keeps or _keeps(node, param)
    return keeps


def _updating_scopes(ctx: ModuleContext) -> frozenset[int]:
    """The scopes (functions, classes, lambdas: what `walk_scope` stops at) that hold a
    statement of a shape `_keeps` accepts, whatever the parameter, and the scope around each
    (`walk_scope(method.body)` enters a function defined directly in the body: a context
    manager's inner `def ctx(): self.depth += n`): only a method among them can keep its
    argument, so the others' bodies are never walked (memoised per module)."""
    memo = ctx.memo_table("meters.updating_scopes")
    if "" not in memo:
        by_type = ctx.nodes_by_type()
        updates: list[ast.AST] = [
            node
            for node in by_type.get(ast.AugAssign, ())
            if isinstance(node, ast.AugAssign)
            and isinstance(node.op, ast.Add)
            and _self_state(node.target)
        ]
        updates += [
            node
            for node in by_type.get(ast.Assign, ())
            if isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.value, ast.BinOp)
            and isinstance(node.value.op, ast.Add)
            and _self_state(node.targets[0])
        ]
        updates += [  # from the module's call index: a module's calls are mostly others
            node
            for node in ctx.flow.calls_named(("append",))
            if isinstance(node.func, ast.Attribute) and _self_state(node.func.value)
        ]
        scopes: set[int] = set()
        for node in updates:
            scope = next((a for a in ctx.ancestors(node) if isinstance(a, _SCOPES)), None)
            if scope is not None:
                scopes.add(id(scope))
                scopes.add(id(ctx.parents.get(scope)))
        memo[""] = frozenset(scopes)
    found: frozenset[int] = memo[""]
    return found


def _keeps(node: ast.AST, param: str) -> bool:
    if isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Add):
        return _self_state(node.target) and _reads_uncut(node.value, param)
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target, value = node.targets[0], node.value
        return (
            _self_state(target)
            and isinstance(value, ast.BinOp)
            and isinstance(value.op, ast.Add)
            and ast.unparse(target) in (ast.unparse(value.left), ast.unparse(value.right))
            and _reads_uncut(value, param)
        )
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return (
            node.func.attr == "append"
            and _self_state(node.func.value)
            and len(node.args) == 1
            and _reads_uncut(node.args[0], param)
        )
    return False


def _self_state(target: ast.expr) -> bool:
    """`self.sum`, `self.history["loss"]`: state the object keeps between calls."""
    while isinstance(target, ast.Subscript):
        target = target.value
    return (
        isinstance(target, ast.Attribute)
        and isinstance(target.value, ast.Name)
        and target.value.id == "self"
    )


def _reads_uncut(expr: ast.expr, param: str) -> bool:
    """`expr` reads `param` other than through a call that cuts its graph."""
    if isinstance(expr, ast.Name):
        return expr.id == param
    if isinstance(expr, ast.Call):
        func = expr.func
        if isinstance(func, ast.Attribute) and func.attr in _CUTS:
            return False
        if isinstance(func, ast.Name) and func.id in _CUTS:
            return False
    if isinstance(expr, ast.Attribute) and expr.attr == "data":
        return False
    return any(
        _reads_uncut(child, param)
        for child in ast.iter_child_nodes(expr)
        if isinstance(child, ast.expr)
    )
