"""A small def-use analysis over one module: which expressions a name may hold.

Scopes are functions (and the module). A name read in a function resolves to the assignments
in that function, then to the module's. `self.x` resolves to every `self.x = ...` in the class.
A call to a function defined in the module resolves to what that function returns. This is
flow-insensitive by design: rules ask "may this value come from X?", and a may-answer over a
module is what lets them see a model built in one function and trained in another.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from functools import cached_property
from typing import TYPE_CHECKING

from agent.checks.loops import walk_scope

if TYPE_CHECKING:
    from agent.checks.base import ModuleContext

ScopeNode = ast.Module | ast.FunctionDef | ast.AsyncFunctionDef
_MAX_DEPTH = 8


def _target_names(target: ast.expr) -> Iterator[tuple[str, ast.expr]]:
    """Names bound by an assignment target, paired with the target node."""
    if isinstance(target, ast.Name):
        yield target.id, target
    elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
        yield f"{target.value.id}.{target.attr}", target
    elif isinstance(target, ast.Tuple | ast.List):
        for elt in target.elts:
            yield from _target_names(elt)


class DataFlow:
    def __init__(self, ctx: ModuleContext) -> None:
        self.ctx = ctx

    @cached_property
    def _scope_bindings(self) -> dict[int, dict[str, list[ast.expr]]]:
        """scope node id -> name -> assigned value expressions (tuple unpacking kept whole)."""
        result: dict[int, dict[str, list[ast.expr]]] = {}
        scopes: list[ScopeNode] = [self.ctx.tree]
        scopes += [
            n for n in ast.walk(self.ctx.tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        ]
        for scope in scopes:
            table: dict[str, list[ast.expr]] = {}
            for node in walk_scope(scope.body):
                pairs: list[tuple[ast.expr, ast.expr]] = []
                if isinstance(node, ast.Assign):
                    pairs = [(t, node.value) for t in node.targets]
                elif isinstance(node, ast.AnnAssign | ast.AugAssign) and node.value is not None:
                    pairs = [(node.target, node.value)]
                elif isinstance(node, ast.NamedExpr):
                    pairs = [(node.target, node.value)]
                elif isinstance(node, ast.For | ast.AsyncFor | ast.comprehension):
                    pairs = [(node.target, node.iter)]
                elif isinstance(node, ast.withitem) and node.optional_vars is not None:
                    pairs = [(node.optional_vars, node.context_expr)]
                for target, value in pairs:
                    for name, _ in _target_names(target):
                        table.setdefault(name, []).append(value)
            result[id(scope)] = table
        return result

    @cached_property
    def _self_attributes(self) -> dict[str, list[ast.expr]]:
        """`self.x` -> values assigned anywhere in the module's methods."""
        merged: dict[str, list[ast.expr]] = {}
        for table in self._scope_bindings.values():
            for name, values in table.items():
                if name.startswith("self."):
                    merged.setdefault(name, []).extend(values)
        return merged

    @cached_property
    def _returns(self) -> dict[str, list[ast.expr]]:
        result: dict[str, list[ast.expr]] = {}
        for node in ast.walk(self.ctx.tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                values = [
                    r.value
                    for r in walk_scope(node.body)
                    if isinstance(r, ast.Return) and r.value is not None
                ]
                result.setdefault(node.name, []).extend(values)
        return result

    def _scope_of(self, node: ast.AST) -> ScopeNode:
        fn = self.ctx.enclosing_function(node)
        return fn if fn is not None else self.ctx.tree

    def definitions(self, node: ast.expr) -> list[ast.expr]:
        """Expressions `node` (a Name or `self.attr`) may hold; [] when unknown."""
        if isinstance(node, ast.Name):
            scope = self._scope_of(node)
            values = self._scope_bindings.get(id(scope), {}).get(node.id)
            if values:
                return values
            return self._scope_bindings[id(self.ctx.tree)].get(node.id, [])
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "self":
                return self._self_attributes.get(f"self.{node.attr}", [])
            scope = self._scope_of(node)
            key = f"{node.value.id}.{node.attr}"
            return self._scope_bindings.get(id(scope), {}).get(key, [])
        return []

    def sources(self, expr: ast.expr, depth: int = 0) -> Iterator[ast.expr]:
        """`expr` and every expression it may derive from through names and local returns."""
        yield expr
        if depth >= _MAX_DEPTH:
            return
        if isinstance(expr, ast.Name | ast.Attribute):
            for value in self.definitions(expr):
                if value is not expr:
                    yield from self.sources(value, depth + 1)
        elif isinstance(expr, ast.Call):
            callee = expr.func.id if isinstance(expr.func, ast.Name) else None
            for value in self._returns.get(callee or "", []):
                yield from self.sources(value, depth + 1)

    def constructed_as(self, expr: ast.expr) -> str | None:
        """Qualified name of the constructor/factory whose result `expr` holds, if resolvable.

        `crit = nn.CrossEntropyLoss(); crit(...)` -> 'torch.nn.CrossEntropyLoss'.
        """
        for source in self.sources(expr):
            if isinstance(source, ast.Call):
                qual = self.ctx.call_qualname(source)
                if qual is not None:
                    return qual
        return None

    def derives_from(self, expr: ast.expr, predicate: Callable[[ast.AST], bool]) -> bool:
        """Whether any sub-expression of any source of `expr` satisfies `predicate`."""
        for source in self.sources(expr):
            for sub in walk_scope(source):
                if predicate(sub):
                    return True
                if sub is not source and isinstance(sub, ast.Name | ast.Attribute):
                    if any(predicate(s) for s in self._shallow_sources(sub)):
                        return True
        return False

    def _shallow_sources(self, expr: ast.expr) -> Iterator[ast.AST]:
        for value in self.definitions(expr):
            yield from walk_scope(value)
