"""Which calls produce a value through shape-preserving steps (a softmax, a model's last layer)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from typing import TYPE_CHECKING

from torchdoctor.agent.checks.analysis.defuse import MAX_DEPTH as MAX_DEPTH
from torchdoctor.agent.checks.analysis.model_facts import ModelFacts
from torchdoctor.agent.checks.analysis.vocabulary import (
    PASSTHROUGH_FUNCTIONS,
    PASSTHROUGH_METHODS,
)
from torchdoctor.agent.checks.loops import walk_scope

if TYPE_CHECKING:
    from torchdoctor.agent.checks.base import ModuleContext


_JOINING_FUNCTIONS = frozenset({"torch.stack", "torch.cat", "torch.concat", "torch.concatenate"})


class Producers(ModelFacts):
    """The calls a value comes from, through names, views, casts and forwards."""

    def producers(self, expr: ast.expr, depth: int = 0) -> Iterator[ast.Call]:
        """The calls that produce `expr`, seen through names, local returns, views and casts.

        `p = F.softmax(z); q = p.view(-1, C)` -> the softmax call for `q`. A model call yields
        itself and, for a local class, the producers of what its `forward` returns. Each
        expression is visited once.
        """
        seen: set[int] = set()
        stack: list[tuple[ast.expr, int]] = [(expr, depth)]
        while stack:
            current, level = stack.pop()
            if id(current) in seen or level > MAX_DEPTH:
                continue
            seen.add(id(current))
            if isinstance(current, ast.Call):
                yield current
            # only hops that may fan out (several bindings, a function's returns) count
            # toward the depth: a chain of `x = x.view(...)` rebindings is followed whole
            step = 0 if self._single_path(current) else 1
            stack.extend((value, level + step) for value in reversed(self._produced_from(current)))

    def stacked_elements(self, call: ast.Call) -> list[ast.expr]:
        """The per-step values that `torch.stack(outputs, 1)` / `torch.cat(outputs)` joins when
        `outputs` is a local list built empty (`outputs = []`) and filled by `.append(v)` in
        the same function, or a list comprehension (`[step(x) for x in xs]`): each `v` (the
        comprehension's element). A seq2seq decoder's per-step predictions, stacked before
        the loss. Empty when the list comes from elsewhere or is filled otherwise."""
        if self.qualname_of(call) not in _JOINING_FUNCTIONS or not call.args:
            return []
        joined = call.args[0]
        if isinstance(joined, ast.ListComp):
            return [joined.elt]
        if not isinstance(joined, ast.Name):
            return []
        scope = self.ctx.enclosing_function(call)
        bindings = [  # what reaches this read: `y_all = []` before `y_all = torch.stack(y_all)`
            b for b in self.reaching_or_all(joined) if self.ctx.enclosing_function(b) is scope
        ]
        if not bindings:
            return []
        if all(isinstance(b, ast.ListComp) for b in bindings):
            return [b.elt for b in bindings if isinstance(b, ast.ListComp)]
        if not all(isinstance(b, ast.List) and not b.elts for b in bindings):
            return []
        body = scope.body if scope is not None else self.ctx.tree.body
        values: list[ast.expr] = []
        for node in walk_scope(body):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == joined.id
            ):
                if node.func.attr in ("extend", "insert", "__setitem__"):
                    return []  # not one value per step
                if node.func.attr == "append" and len(node.args) == 1:
                    values.append(node.args[0])
        return values

    def passes_through(self, call: ast.Call) -> bool:
        """`call` hands on what it is given or what a local function returns, meaning kept:
        a view or cast (`prediction.view(-1)`) or a call of a module-level function or own
        method whose returns `producers` follows (`return dot_product_decode(z)`). What
        produced the value lies past it."""
        if self._single_path(call):
            return True
        return self.qualname_of(call) is None and bool(
            self.returns_of(call) or self._single_return(call)
        )

    def _single_path(self, expr: ast.expr) -> bool:
        """`expr` passes through to exactly one expression: an index, a view or cast, or a
        name read where one binding reaches it."""
        if isinstance(expr, ast.Subscript | ast.Starred):
            return True
        if isinstance(expr, ast.Name):
            return self.reaching(expr) is not None
        if isinstance(expr, ast.Call):
            func = expr.func
            return (isinstance(func, ast.Attribute) and func.attr in PASSTHROUGH_METHODS) or (
                self.qualname_of(expr) in PASSTHROUGH_FUNCTIONS and bool(expr.args)
            )
        return False

    def _produced_from(self, expr: ast.expr) -> list[ast.expr]:
        """What `expr` passes through unchanged in meaning (see `producers`)."""
        if isinstance(expr, ast.Name):  # the binding that reaches this read, when one does
            values = [v for v in self.reaching_or_all(expr) if v is not expr]
            return values + self._unpacked_return_elements(expr, values)
        if isinstance(expr, ast.Attribute):
            return [v for v in self.definitions(expr) if v is not expr]
        if isinstance(expr, ast.Subscript | ast.Starred):
            return [expr.value]
        if isinstance(expr, ast.IfExp):
            return [expr.body, expr.orelse]
        if isinstance(expr, ast.Call):
            func = expr.func
            if isinstance(func, ast.Attribute) and func.attr in PASSTHROUGH_METHODS:
                return [func.value]
            if self.qualname_of(expr) in PASSTHROUGH_FUNCTIONS and expr.args:
                return [expr.args[0]]
            return list(self.returns_of(expr)) or self._single_return(expr)
        return []

    def unpacked_elements(self, name: ast.Name) -> list[ast.expr]:
        """What a name bound by unpacking a local call's result holds: the element at its
        position of each tuple the callee returns (`optimizer, scheduler = init_opt(...)` ->
        the `WarmupCosine(...)` of `return optimizer, WarmupCosine(...)`)."""
        values = [v for v in self.reaching_or_all(name) if v is not name]
        return self._unpacked_return_elements(name, values)

    def _unpacked_return_elements(self, name: ast.Name, values: list[ast.expr]) -> list[ast.expr]:
        """For a name bound by unpacking a local call's result (`logits, h1, h2 =
        model(x)`), the element at its position of each tuple the callee returns (`return
        self.sigm(scores), h_1, h_2` -> `self.sigm(scores)`): only when every return of the
        callee is a tuple of that arity."""
        found: list[ast.expr] = []
        for value, position, arity in self.unpackings(name):
            if not isinstance(value, ast.Call) or all(value is not v for v in values):
                continue
            returns = self.returns_of(value) or self._single_return(value)
            if not returns or not all(
                isinstance(r, ast.Tuple)
                and len(r.elts) == arity
                and not any(isinstance(e, ast.Starred) for e in r.elts)
                for r in returns
            ):
                continue
            found += [r.elts[position] for r in returns if isinstance(r, ast.Tuple)]
        return found

    def _single_return(self, call: ast.Call) -> list[ast.expr]:
        """What the one local function `call` runs returns (`self(x)` -> `forward`), when it
        has a single `return`: a forward that returns logits in training and probabilities
        otherwise says nothing certain about either."""
        if self.qualname_of(call) is not None:
            return []
        targets = self.ctx.calls.resolve(call)
        if len(targets) != 1:
            return []
        returns = [
            node.value
            for node in walk_scope(targets[0].body)
            if isinstance(node, ast.Return) and node.value is not None
        ]
        return returns if len(returns) == 1 else []

    def module_output_producers(self, module: ast.expr, depth: int = 0) -> Iterator[ast.Call]:
        """Calls that produce what calling `module` returns: the last layer of an
        `nn.Sequential` (given to its constructor, as a layer attribute, or added last by
        `add_module`/`append`: `model = nn.Sequential(); model.add_module("softmax",
        nn.Softmax())`), or what a local class's `forward` returns. A model that is a
        parameter of its function is what the module's calls pass for it (`def train(model,
        loss, ...)` called as `train(build_model(...), ...)`)."""
        if depth > 3:
            return
        if isinstance(module, ast.Name):
            for passed in self.ctx.calls.arguments_for(module):
                yield from self.module_output_producers(passed, depth + 1)
        for call in self.constructors(module):
            qual = self.qualname_of(call) or ""
            if qual.endswith("Sequential"):
                last = call.args[-1] if call.args else _added_last(self.ctx, call)
                if isinstance(last, ast.Call):
                    yield last
                    yield from self.module_output_producers(last, depth + 1)
                elif isinstance(last, ast.Name | ast.Attribute):
                    for layer in self.constructors(last):
                        yield layer
                        yield from self.module_output_producers(layer, depth + 1)
            elif isinstance(call.func, ast.Name) and call.func.id in self.classes:
                yield from self.forward_producers(self.classes[call.func.id], depth)

    def forward_producers(self, cls: ast.ClassDef, depth: int) -> Iterator[ast.Call]:
        for stmt in cls.body:
            if isinstance(stmt, ast.FunctionDef) and stmt.name == "forward":
                for node in walk_scope(stmt.body):
                    if isinstance(node, ast.Return) and node.value is not None:
                        for producer in self.producers(node.value):
                            yield producer
                            if isinstance(producer.func, ast.Attribute | ast.Name):
                                callee = producer.func
                                if self.is_module_value(callee):
                                    yield from self.module_output_producers(callee, depth + 1)
                                for layer in _layers_handed_to(producer):
                                    yield from self.module_output_producers(layer, depth + 1)

    def value_producers(self, expr: ast.expr) -> Iterator[ast.Call]:
        """`producers`, plus the output layers of any model whose call produces `expr`."""
        for call in self.producers(expr):
            yield call
            func = call.func
            if self.is_model_call(call):
                forward = isinstance(func, ast.Attribute) and func.attr == "forward"
                target = func.value if forward and isinstance(func, ast.Attribute) else func
                yield from self.module_output_producers(target)


def _added_last(ctx: ModuleContext, built: ast.Call) -> ast.expr | None:
    """The layer the last `add_module(name, layer)` / `append(layer)` of the function gives
    the empty `nn.Sequential()` that `built` makes and binds to a name (`model =
    nn.Sequential()` then `model.add_module("softmax", nn.Softmax())`): the container's
    output layer."""
    statement = ctx.parents.get(built)
    if not (
        isinstance(statement, ast.Assign)
        and len(statement.targets) == 1
        and isinstance(statement.targets[0], ast.Name)
    ):
        return None
    name = statement.targets[0].id
    scope = ctx.enclosing_function(built)
    body = scope.body if scope is not None else ctx.tree.body
    last: ast.expr | None = None
    for node in walk_scope(body):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == name
        ):
            if node.func.attr == "add_module" and len(node.args) == 2:
                last = node.args[1]
            elif node.func.attr == "append" and len(node.args) == 1:
                last = node.args[0]
    return last


def _layers_handed_to(call: ast.Call) -> list[ast.expr]:
    """Layers a wrapper module is called with besides its input (`self.cd4(x,
    nn.Sequential(self.fc4, self.softmax))`, a concrete-dropout block that applies the layer
    it is handed): what it returns is that layer's output. Only layers built inline as an
    `nn.Sequential(...)` count."""
    return [
        arg
        for arg in call.args[1:]
        if isinstance(arg, ast.Call) and ast.unparse(arg.func).endswith("Sequential")
    ]
