"""Which functions of the module a call runs, and which calls run a function.

Resolved: `f(x)` (a module function, or a local class's `__init__`), `self.m(x)` / `cls.m(x)`
(the enclosing class and its local bases), `self(x)` (the enclosing class's `forward`),
`model(x)` / `model.forward(x)` / `model.m(x)` where `model` holds an instance of a local class
(through the def-use tables: `model = Net().to(dev)`), and `opt.step(closure)` (the closure).
Calls into other files are the project index's (`analysis.project`). Unresolved calls resolve
to nothing: rules built on the graph stay silent rather than guess.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cached_property
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torchdoctor.agent.checks.base import ModuleContext

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef
_MODE_CHAIN = frozenset({"to", "cuda", "cpu", "eval", "train", "float", "half", "bfloat16"})


class CallGraph:
    """Call edges between the module's own functions and methods, built on demand."""

    def __init__(self, ctx: ModuleContext) -> None:
        self.ctx = ctx

    @cached_property
    def _defs(self) -> tuple[dict[str, list[FunctionNode]], dict[str, dict[str, FunctionNode]]]:
        """(plain functions by name, class name -> method name -> method)."""
        functions: dict[str, list[FunctionNode]] = {}
        methods: dict[str, dict[str, FunctionNode]] = {}
        by_type = self.ctx.nodes_by_type()
        for fn in [*by_type.get(ast.FunctionDef, ()), *by_type.get(ast.AsyncFunctionDef, ())]:
            assert isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
            parent = self.ctx.parents.get(fn)
            if isinstance(parent, ast.ClassDef):
                methods.setdefault(parent.name, {})[fn.name] = fn
            else:
                functions.setdefault(fn.name, []).append(fn)
        return functions, methods

    @cached_property
    def classes(self) -> dict[str, ast.ClassDef]:
        return {
            n.name: n
            for n in self.ctx.nodes_by_type().get(ast.ClassDef, ())
            if isinstance(n, ast.ClassDef)
        }

    def owner(self, fn: FunctionNode) -> ast.ClassDef | None:
        parent = self.ctx.parents.get(fn)
        return parent if isinstance(parent, ast.ClassDef) else None

    def method(
        self, class_name: str, name: str, seen: frozenset[str] = frozenset()
    ) -> FunctionNode | None:
        """`name` defined on the local class or inherited from a local base."""
        own = self._defs[1].get(class_name, {}).get(name)
        if own is not None or class_name in seen:
            return own
        cls = self.classes.get(class_name)
        for base in cls.bases if cls is not None else []:
            base_name = base.id if isinstance(base, ast.Name) else None
            if base_name in self.classes:
                found = self.method(base_name, name, seen | {class_name})
                if found is not None:
                    return found
        return None

    def instance_class(self, expr: ast.expr) -> str | None:
        """The local class whose instance `expr` may hold (`self` included)."""
        if isinstance(expr, ast.Name) and expr.id == "self":
            fn = self.ctx.enclosing_function(expr)
            owner = self.owner(fn) if fn is not None else None
            return owner.name if owner is not None else None
        if isinstance(expr, ast.Call):
            call: ast.expr = expr
        else:
            call = next((s for s in self.ctx.flow.sources(expr) if isinstance(s, ast.Call)), expr)
        while (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr in _MODE_CHAIN
        ):
            call = call.func.value
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name):
            return call.func.id if call.func.id in self.classes else None
        return None

    def resolve(self, call: ast.Call) -> list[FunctionNode]:
        """The local functions `call` may run (empty when it leaves the module or is unknown)."""
        memo = self.ctx.memo_table("callgraph.resolve")
        found = memo.get(id(call))
        if found is None:
            found = memo[id(call)] = self._resolve(call)
        return found

    def _resolve(self, call: ast.Call) -> list[FunctionNode]:
        functions, _ = self._defs
        func = call.func
        if isinstance(func, ast.Name):
            if func.id == "self":
                return self._method_of("self", func, "forward")
            if func.id in self.classes:
                init = self.method(func.id, "__init__")
                return [init] if init is not None else []
            if func.id in functions:
                return list(functions[func.id])
            return self._method_of_instance(func, "forward")
        if isinstance(func, ast.Attribute):
            receiver = func.value
            if isinstance(receiver, ast.Name) and receiver.id in ("self", "cls"):
                return self._method_of(
                    receiver.id, receiver, func.attr
                ) or self._method_of_instance(func, "forward")
            if func.attr == "forward":
                return self._method_of_instance(receiver, "forward")
            found = self._method_of_instance(receiver, func.attr)
            return found or self._method_of_instance(func, "forward")
        return []

    def _method_of(self, _kind: str, anchor: ast.expr, name: str) -> list[FunctionNode]:
        fn = self.ctx.enclosing_function(anchor)
        while fn is not None and self.owner(fn) is None:
            fn = self.ctx.enclosing_function(fn)
        owner = self.owner(fn) if fn is not None else None
        found = self.method(owner.name, name) if owner is not None else None
        return [found] if found is not None else []

    @cached_property
    def _method_names(self) -> frozenset[str]:
        return frozenset(name for methods in self._defs[1].values() for name in methods)

    def _method_of_instance(self, expr: ast.expr, name: str) -> list[FunctionNode]:
        if name not in self._method_names or self.ctx.qualname(expr) is not None:
            return []
        class_name = self.instance_class(expr)
        found = self.method(class_name, name) if class_name is not None else None
        return [found] if found is not None else []

    def bind(self, call: ast.Call, fn: FunctionNode) -> dict[str, ast.expr]:
        """Parameter name -> the argument `call` passes to it (`self` skipped for methods)."""
        params = [a.arg for a in [*fn.args.posonlyargs, *fn.args.args]]
        if self.owner(fn) is not None and params and not _is_static(fn):
            params = params[1:]
        bound: dict[str, ast.expr] = {}
        for name, arg in zip(params, call.args, strict=False):
            if isinstance(arg, ast.Starred):
                break
            bound[name] = arg
        named = {a.arg for a in [*fn.args.args, *fn.args.kwonlyargs]}
        for keyword in call.keywords:
            if keyword.arg is not None and keyword.arg in named:
                bound[keyword.arg] = keyword.value
        return bound

    def arguments_for(self, name: ast.Name) -> list[ast.expr]:
        """What the module's calls of `name`'s function pass for it, when `name` reads one of
        that function's parameters and is not re-bound there (`def train(config, loader,
        model, criterion, optimizer)` called as `train(config, train_loader, model,
        criterion, optimizer)` from `main`); [] otherwise. Memoised per function and name."""
        fn = self.ctx.enclosing_function(name)
        if fn is None:
            return []
        memo = self.ctx.memo_table("callgraph.arguments_for")
        key = (id(fn), name.id)
        if key not in memo:
            params = {a.arg for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]}
            found: list[ast.expr] = []
            if name.id in params and not _stored_in(fn, name.id):
                for site in self.call_sites(fn):
                    passed = self.bind(site, fn).get(name.id)
                    if passed is not None:
                        found.append(passed)
            memo[key] = found
        return memo[key]  # type: ignore[no-any-return]

    @cached_property
    def _sites(self) -> dict[int, list[ast.Call]]:
        sites: dict[int, list[ast.Call]] = {}
        if not self._defs[0] and not self._defs[1]:
            return sites
        for call in self.ctx.nodes_by_type().get(ast.Call, ()):
            assert isinstance(call, ast.Call)
            if not isinstance(call.func, ast.Name | ast.Attribute):
                continue
            for fn in self.resolve(call):
                sites.setdefault(id(fn), []).append(call)
        return sites

    def call_sites(self, fn: FunctionNode) -> list[ast.Call]:
        """The module's calls that may run `fn`. A `forward` runs through `model(x)` calls of
        any name, so all calls are resolved once for it; other functions are called by name."""
        if fn.name in ("forward", "__init__"):
            return self._sites.get(id(fn), [])
        named = self.ctx.flow.calls_named((fn.name,))
        return [call for call in named if any(f is fn for f in self.resolve(call))]

    def callees(self, body: list[ast.stmt] | ast.AST) -> Iterator[tuple[ast.Call, FunctionNode]]:
        """(call, local function it runs) for every call in `body`'s own scope."""
        from torchdoctor.agent.checks.loops import walk_scope

        for node in walk_scope(body):
            if isinstance(node, ast.Call):
                for fn in self.resolve(node):
                    yield node, fn

    def reachable(self, fn: FunctionNode, limit: int = 40) -> list[FunctionNode]:
        """`fn` and the local functions it runs, transitively (bounded)."""
        order: list[FunctionNode] = [fn]
        seen = {id(fn)}
        index = 0
        while index < len(order) and len(order) < limit:
            for _, callee in self.callees(order[index].body):
                if id(callee) not in seen:
                    seen.add(id(callee))
                    order.append(callee)
            index += 1
        return order


def _stored_in(fn: FunctionNode, name: str) -> bool:
    """Whether `fn`'s own body binds `name` (the def-use tables fall back to a module-level
    binding of the same name for a parameter, which says nothing about the parameter)."""
    from torchdoctor.agent.checks.loops import walk_scope

    return any(
        isinstance(node, ast.Name) and node.id == name and isinstance(node.ctx, ast.Store)
        for node in walk_scope(fn.body)
    )


def _is_static(fn: FunctionNode) -> bool:
    return any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in fn.decorator_list)
