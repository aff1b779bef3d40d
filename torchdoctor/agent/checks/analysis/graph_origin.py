"""Is a value still attached to the autograd graph (a loss or a model output)?"""

from __future__ import annotations

import ast
from collections.abc import Generator, Iterable
from typing import TypeAlias, TypeVar

from torchdoctor.agent.checks.analysis.defuse import MAX_VISITS, GraphOrigin, identifier
from torchdoctor.agent.checks.analysis.gradmode import is_grad_off_context
from torchdoctor.agent.checks.analysis.model_facts import ModelFacts, bound_to_function_or_import
from torchdoctor.agent.checks.analysis.vocabulary import (
    AGGREGATING_BUILTINS,
    DETACHING_BUILTINS,
    DETACHING_METHODS,
    FOLDING_FUNCTIONS,
    HOST_COPY_HELPERS,
    NON_GRAD_TORCH,
)
from torchdoctor.agent.checks.base import ModuleContext
from torchdoctor.agent.checks.loops import walk_tree

_T = TypeVar("_T")
# A step of the origin analysis: yields the expression whose origin it needs next, is sent
# that origin back, and returns its own answer.
_Steps: TypeAlias = Generator[ast.expr, GraphOrigin | None, _T]


class GraphOrigins(ModelFacts):
    """Whether a value may still hold an autograd graph, memoised per expression."""

    def graph_origin(self, expr: ast.expr) -> GraphOrigin | None:
        """'loss' or 'output' when `expr` may still hold an autograd graph, else None.

        A value is attached when it comes from a loss (a criterion, `F.*_loss`, a function
        named like a loss) or a model's output, through arithmetic, reductions and views; it
        is detached by `.item()`, `.detach()`, `float()`, comparisons and `argmax`, and
        anything computed under `no_grad`/`inference_mode`.
        """
        return self._origin(expr)

    def _origin(self, root: ast.expr) -> GraphOrigin | None:
        """Work the recursive definition out on an explicit stack of generators, so that a
        long chain of definitions (`h = f(h)` many times over, a long `a + b + ...`) is not
        bounded by Python's recursion limit. An expression already being worked out lower on
        the stack answers None: a function that unpacks its own returned tuple
        (`ok, depth = f(x[0])`) would otherwise chase itself for ever. What is worked out
        through such a cut is not memoised until the expression cut is finished: asked on its
        own later, it may hold a graph the cut hid (the answer must not depend on which value
        a rule asked about first)."""
        memo = self._origin_memo
        # answers that went through a cut: good for the rest of this query only
        provisional: dict[int, GraphOrigin | None] = {}
        frames: list[tuple[int, _Steps[GraphOrigin | None], set[int]]] = []
        pending: set[int] = set()
        expr = root
        while True:
            key = id(expr)
            value: GraphOrigin | None = None
            if key in memo:
                value = memo[key]
            elif key in provisional:
                value = provisional[key]
            elif key not in pending and len(pending) <= MAX_VISITS:
                pending.add(key)
                frames.append((key, self._origin_steps(expr), set()))
            elif frames:
                frames[-1][2].add(key)  # a cut: this frame's answer depends on `key`'s
            while True:
                if not frames:
                    return value
                key, steps, cuts = frames[-1]
                try:
                    expr = steps.send(value)
                    break
                except StopIteration as done:
                    frames.pop()
                    pending.discard(key)
                    value = done.value
                    cuts.discard(key)
                    if cuts:
                        provisional[key] = value
                        if frames:
                            frames[-1][2].update(cuts)
                    else:
                        memo[key] = value

    def _first_origin(self, exprs: Iterable[ast.expr]) -> _Steps[GraphOrigin | None]:
        found: GraphOrigin | None = None
        for expr in exprs:
            origin = yield expr
            if origin == "loss":
                return origin
            found = found or origin
        return found

    def _origin_steps(self, expr: ast.expr) -> _Steps[GraphOrigin | None]:
        if self.grad_disabled_at(expr):
            return None
        if isinstance(expr, ast.Name):
            reached = self.reaching(expr)  # the one binding every path brings, else all live
            definitions = [reached] if reached is not None else self.live_definitions(expr)
            elements = yield from self._unpacked_elements(expr, definitions)
            found = yield from self._first_origin(elements)
            if (
                found != "loss"
                and definitions
                and self._backpropagated(expr, definitions)
                and not any(_detaching(value) for value in definitions)
            ):
                # `loss = helper(...)` or a model that returns its own loss (`loss =
                # ddpm(x)`), then `loss.backward()`: a loss
                return "loss"
            return found
        if isinstance(expr, ast.Attribute):
            if expr.attr in ("data", "grad", "shape", "dtype", "device", "requires_grad", "ndim"):
                return None
            return (yield from self._first_origin(self.definitions(expr)))
        if isinstance(expr, ast.Call):
            return (yield from self._call_origin(expr))
        if isinstance(expr, ast.BinOp):
            return (yield from self._first_origin((expr.left, expr.right)))
        if isinstance(expr, ast.UnaryOp):
            return (yield expr.operand)
        if isinstance(expr, ast.Subscript | ast.Starred):
            return (yield expr.value)
        if isinstance(expr, ast.IfExp):
            return (yield from self._first_origin((expr.body, expr.orelse)))
        if isinstance(expr, ast.Tuple | ast.List):
            return (yield from self._first_origin(expr.elts))
        if isinstance(expr, ast.Dict):
            return (yield from self._first_origin(expr.values))
        return None

    def _unpacked_elements(
        self, name: ast.Name, definitions: list[ast.expr]
    ) -> _Steps[list[ast.expr]]:
        """`losses, stats = self.compute_loss(...)`: `stats` holds only the element of the
        local function's returned tuple at its position (fairseq criteria return a loss and a
        dict of `.item()` counts), provided the analysis sees the graph in another element of
        every such tuple; otherwise the whole call, as before (an opaque helper's result)."""
        positions = {id(value): (pos, arity) for value, pos, arity in self.unpackings(name)}
        if not positions:
            return definitions
        resolved: list[ast.expr] = []
        for value in definitions:
            elements = yield from self._returned_elements(value, *positions.get(id(value), (-1, 0)))
            resolved.extend(elements if elements is not None else [value])
        return resolved

    def _returned_elements(
        self, value: ast.expr, position: int, arity: int
    ) -> _Steps[list[ast.expr] | None]:
        if position < 0:
            return None
        returned = self._tuple_returns(value)
        if not returned:
            return None
        elements: list[ast.expr] = []
        for tup in returned:
            if not (
                isinstance(tup, ast.Tuple)
                and len(tup.elts) == arity
                and not any(isinstance(e, ast.Starred) for e in tup.elts)
            ):
                return None
            others = [
                part
                for i, e in enumerate(tup.elts)
                if i != position
                for part in (e, *self._stored_items(e))
            ]
            if (yield from self._first_origin(others)) is None:
                return None  # the graph is not seen anywhere in the tuple: keep the whole call
            elements += [tup.elts[position], *self._stored_items(tup.elts[position])]
        return elements

    def _tuple_returns(self, value: ast.expr) -> list[ast.expr]:
        """What a local function may return where the unpacked value is its call, directly or
        through one name (`result = step(...)`, `if result is None: continue`, `a, b = result`);
        a `return None` is left out: unpacking it would raise, so the caller filtered it."""
        bound = self.definitions(value) if isinstance(value, ast.Name) else [value]
        calls = [call for call in bound if isinstance(call, ast.Call)]
        if not calls or len(calls) != len(bound):
            return []
        per_call = [self.returns_of(call) for call in calls]
        if not all(per_call):
            return []
        return [
            r
            for returned in per_call
            for r in returned
            if not (isinstance(r, ast.Constant) and r.value is None)
        ]

    def _stored_items(self, container: ast.expr) -> list[ast.expr]:
        """Values stored into a returned dict or list (`stats[k][j] = (hits, n)`) in the
        function that builds it: what the container holds besides its literal."""
        function = self.ctx.enclosing_function(container)
        if not isinstance(container, ast.Name) or function is None:
            return []
        stored: list[ast.expr] = []
        for node in walk_tree(function):
            if isinstance(node, ast.Assign) and any(
                _subscript_root(t) == container.id for t in node.targets
            ):
                stored.append(node.value)
        return stored

    def _backpropagated(self, name: ast.Name, definitions: list[ast.expr]) -> bool:
        """`name.backward()`, `name["loss"].backward()` or `name.loss.backward()` is called in
        the function that reads `name`, or an engine's `accelerator.backward(name)`, on a
        binding of `name` that reaches here: whatever opaque helper produced it (a training
        step returning a dict of outputs, a Hugging Face output object), it holds an autograd
        graph. The training loop's `loss` says nothing of the evaluation loop's `loss =
        outputs.loss`, bound from a forward run under `no_grad` in the same function."""
        memo = self.ctx.memo_table("graph_origin.backpropagated")
        if "" not in memo:
            found: dict[tuple[int, str], list[ast.Name]] = {}
            for call in self.calls_named(("backward",)):
                if not isinstance(call.func, ast.Attribute):
                    continue
                receiver = _output_holder(call.func.value)
                if receiver is not None and self._backward_engine(call, receiver):
                    # the engine runs backward on its argument (`accelerator.backward(loss)`)
                    receiver = _output_holder(call.args[0]) if call.args else None
                if receiver is not None:
                    found.setdefault((id(self._scope_of(call)), receiver.id), []).append(receiver)
            memo[""] = found
        receivers: list[ast.Name] = memo[""].get((id(self._scope_of(name)), name.id), [])
        ours = {id(value) for value in definitions}
        for receiver in receivers:
            reached = self.reaching(receiver)
            theirs = [reached] if reached is not None else self.live_definitions(receiver)
            if not theirs or any(id(value) in ours for value in theirs):
                return True
        return False

    def _backward_engine(self, call: ast.Call, receiver: ast.Name) -> bool:
        """`accelerator.backward(loss)`, `fabric.backward(loss)`: an object built from a class
        (or, when its binding is unknown, given the loss to run backward on) holds no graph."""
        values = self.definitions(receiver)
        if not values:
            return bool(call.args)
        return all(
            isinstance(v, ast.Call)
            and isinstance(v.func, ast.Name | ast.Attribute)
            and (v.func.id if isinstance(v.func, ast.Name) else v.func.attr)[:1].isupper()
            for v in values
        )

    def _call_origin(self, call: ast.Call) -> _Steps[GraphOrigin | None]:
        func = call.func
        if isinstance(func, ast.Name) and func.id in DETACHING_BUILTINS:
            return None
        if isinstance(func, ast.Attribute) and func.attr in DETACHING_METHODS:
            return None
        if isinstance(func, ast.Name) and (
            func.id in self.module_classes or _imported_class_name(self.ctx, func.id)
        ):
            # `STFTLoss(fs, ss, wl)`: building a module of this file (one resolution of a
            # multi-resolution loss, kept in a ModuleList) makes a module, not a value; so
            # does a class imported by name (CUT's `PatchNCELoss(opt)`, `from .patchnce`)
            return None
        if self.is_loss_callee(func) and not self._backpropagates_itself(call):
            helpers = self.ctx.calls.resolve(call)
            if helpers and all(self._grad_off_inside(fn) for fn in helpers):
                # an evaluation helper named like a loss (`evaluate_dpo_loss_loader`, its
                # losses computed under no_grad): what it returns decides
                return (yield from self._first_origin(self.returns_of(call)))
            if not (self.makes_no_tensors and helpers):
                return "loss"
            # a local function named like a loss in a module that makes no tensors (a numpy
            # lecture's `loss(x, y)`): a loss only if what it is given or returns holds a graph
            given = [*call.args, *(k.value for k in call.keywords), *self.returns_of(call)]
            return "loss" if (yield from self._first_origin(given)) else None
        if self.is_model_call(call):
            if not self.frozen_module(func):
                return "output"
            inputs = [*call.args, *(k.value for k in call.keywords)]
            return (yield from self._first_origin(inputs))  # a graph only through its inputs
        qual = self.qualname_of(call)
        if qual in FOLDING_FUNCTIONS:  # `functools.reduce(operator.add, losses)`: the values
            return (yield from self._first_origin(call.args[1:]))
        if qual is not None:
            if qual.startswith("torch.") and qual.rsplit(".", 1)[-1] not in NON_GRAD_TORCH:
                return (yield from self._first_origin(call.args))
            return None
        if isinstance(func, ast.Name) and func.id in AGGREGATING_BUILTINS:
            return (yield from self._first_origin(call.args))
        returned = self.returns_of(call)
        if returned:
            return (yield from self._first_origin(returned))
        if self._runs_own_layers(call):
            return "output"
        if isinstance(func, ast.Attribute):
            return (yield func.value)
        return None

    def _grad_off_inside(self, fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
        """The function is decorated with, or opens, a no_grad/inference_mode context."""
        if any(is_grad_off_context(self.ctx, d) for d in fn.decorator_list):
            return True
        return any(
            isinstance(node, ast.With)
            and any(is_grad_off_context(self.ctx, i.context_expr) for i in node.items)
            for node in walk_tree(fn)
        )

    def _backpropagates_itself(self, call: ast.Call) -> bool:
        """A local function named like a loss that runs `backward()` on its own losses
        (`loss_batch, valid_acc = _get_loss_acc(model, loader)`): a training routine, whose
        returns say what its result holds."""
        functions = self.ctx.calls.resolve(call)
        return bool(functions) and all(
            any(
                isinstance(n, ast.Call)
                and isinstance(n.func, ast.Attribute)
                and n.func.attr == "backward"
                for n in walk_tree(fn)
            )
            for fn in functions
        )

    def _runs_own_layers(self, call: ast.Call) -> bool:
        """`agent.get_action_and_value(obs)`: a method other than `forward` of a local
        `nn.Module` instance that calls its own layers (`self.actor(x)`) outside `no_grad`
        and returns something other than a detached value: its result holds the graph as
        `agent(obs)` would."""
        func = call.func
        if not isinstance(func, ast.Attribute) or identifier(func.value) in ("self", "cls"):
            return False
        for fn in self.ctx.calls.resolve(call):
            owner = self.ctx.calls.owner(fn)
            if owner is None or owner.name not in self.module_classes:
                continue
            if any(is_grad_off_context(self.ctx, d) for d in fn.decorator_list):
                continue
            returns = [
                n.value for n in walk_tree(fn) if isinstance(n, ast.Return) and n.value is not None
            ]
            if not returns or all(_detaching(r) for r in returns):
                continue
            if any(
                isinstance(n, ast.Call) and self.is_model_call(n) and not _lexically_off(self, n)
                for n in walk_tree(fn)
            ):
                return True
        return False


def _lexically_off(facts: GraphOrigins, node: ast.AST) -> bool:
    """`node` sits in a `with torch.no_grad():` block of its own function."""
    parent = facts.ctx.parents.get(node)
    while parent is not None and not isinstance(parent, ast.FunctionDef | ast.AsyncFunctionDef):
        if isinstance(parent, ast.With | ast.AsyncWith) and any(
            is_grad_off_context(facts.ctx, item.context_expr) for item in parent.items
        ):
            return True
        parent = facts.ctx.parents.get(parent)
    return False


def _subscript_root(target: ast.expr) -> str | None:
    """`stats[a][b]` -> 'stats'; None for anything but an item store into a name."""
    if not isinstance(target, ast.Subscript):
        return None
    while isinstance(target, ast.Subscript):
        target = target.value
    return target.id if isinstance(target, ast.Name) else None


def _output_holder(receiver: ast.expr) -> ast.Name | None:
    """The variable a back-propagated value is read from: `loss` itself, or the object it
    is a field of (`out["loss"]`, `out.loss`); `self.loss` belongs to no local variable."""
    if isinstance(receiver, ast.Attribute) or (
        isinstance(receiver, ast.Subscript) and isinstance(receiver.slice, ast.Constant)
    ):
        receiver = receiver.value
    if isinstance(receiver, ast.Name) and receiver.id != "self":
        return receiver
    return None


def _detaching(value: ast.expr) -> bool:
    """`loss.item()`, `float(loss)`, `loss.detach()`, `to_numpy(loss)`: a binding that holds
    no graph."""
    if not isinstance(value, ast.Call):
        return False
    func = value.func
    if isinstance(func, ast.Name):
        return func.id in DETACHING_BUILTINS or func.id in HOST_COPY_HELPERS
    return isinstance(func, ast.Attribute) and (
        func.attr in DETACHING_METHODS or func.attr in HOST_COPY_HELPERS
    )


def _imported_class_name(ctx: ModuleContext, name: str) -> bool:
    """An imported name spelt as a class (`PatchNCELoss`, not `LOSSES` nor `dice_loss`)."""
    return (
        name[:1].isupper()
        and not name.isupper()
        and name not in ctx.loops.functions
        and bound_to_function_or_import(ctx, name)
    )
