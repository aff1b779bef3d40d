"""Accumulators that keep autograd graphs alive across iterations (`total += loss`)."""

from __future__ import annotations

import ast
from functools import cached_property

from torchdoctor.agent.checks.analysis.defuse import identifier
from torchdoctor.agent.checks.analysis.graph_origin import GraphOrigins
from torchdoctor.agent.checks.analysis.roles import evaluation_helpers
from torchdoctor.agent.checks.loops import added_to_in, is_periodic_guard, walk_scope, walk_tree

# Calls that make a loop a training loop: each iteration back-propagates or steps.
_STEPS = frozenset({"backward", "manual_backward", "step", "grad"})


def _steps(name: str) -> bool:
    """`loss.backward()`, `optimizer.step()`, or a helper that does it (`training_step`)."""
    return name in _STEPS or name.endswith(("_step", "_backward"))


class Accumulations(GraphOrigins):
    """Accumulation sites and whether their graphs survive the iteration."""

    @cached_property
    def accumulations(self) -> list[Accumulation]:
        """`acc += v`, `acc = acc + v`, `acc.append(v)`, `log[step] = v` inside a loop.
        Whether `acc` really carries values across iterations is `carried_across_iterations`
        (asked only for the sites a rule cares about, since it is the costly part)."""
        found: list[Accumulation] = []
        candidates: list[ast.AST] = [*self.nodes(ast.AugAssign), *self.nodes(ast.Assign)]
        candidates += self.calls_named(("append", "extend"))
        for node in candidates:
            pair = _accumulation_pair(node) or self._keyed_store(node)
            if pair is None:
                continue
            loop = self.innermost_loop(node)
            while loop is not None and _iterates_keys_of(loop, pair[0]):
                loop = self.innermost_loop(loop)  # `for k, v in losses.items(): total[k] += v`
            if loop is not None:
                found.append(Accumulation(node, pair[0], pair[1], loop))
        return found

    def _keyed_store(self, node: ast.AST) -> tuple[ast.expr, ast.expr] | None:
        """(container, stored value) for `log[step] = v` in a loop that moves `step` every
        iteration (its own loop variable, or a counter it increments: `step += 1`), `log` a
        dict or list built by a literal (`{}`, `[None] * n`, `dict()`): each iteration keeps
        its value in a new slot, as `log.append(v)` would (caikit-nlp's `step_loss_log`)."""
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            return None
        target = node.targets[0]
        if not (
            isinstance(target, ast.Subscript)
            and isinstance(target.slice, ast.Name)
            and isinstance(target.value, ast.Name)
        ):
            return None
        loop = self.innermost_loop(node)
        if loop is None or not _moved_every_iteration(target.slice.id, loop):
            return None
        bindings = self.definitions(target.value)
        if not bindings or not all(_container_literal(b) for b in bindings):
            return None
        return target.value, node.value

    def carried_across_iterations(self, acc: Accumulation) -> bool:
        """The accumulator outlives the iteration (no plain re-assignment in the loop body)
        and is never back-propagated itself (summing micro-batch losses is intended). A loop
        over a literal list or tuple (`for s in [1, 1/2**0.5, 1/2]`: DINO's three scales)
        runs a fixed handful of times: what it sums is one result, not a growing history."""
        if isinstance(acc.loop, ast.For | ast.AsyncFor) and isinstance(
            acc.loop.iter, ast.List | ast.Tuple
        ):
            return False
        if self._assigned_in(acc.target, acc.loop, acc.node):
            return False
        return not self.is_backpropagated(acc.target, history=isinstance(acc.node, ast.Call))

    def total_returned_by_loss_function(self, acc: Accumulation) -> bool:
        """A loss function summing its terms over a loop (heads, scales, layers) and returning
        the total (or a dict it stores the total in): its caller back-propagates it, often
        from another module. Not so when the
        loop itself steps or back-propagates: a training loop that returns its running loss
        keeps every step's graph; nor a loop that runs the model on each batch in an
        evaluation helper (called with held-out data, never back-propagating: LSTNet's
        `evaluate(data, X, Y, model, evaluateL2, ...)` summing `evaluateL2(output, Y)` over
        the batches), whose total no caller back-propagates."""
        function = self.ctx.enclosing_function(acc.loop)
        if function is None:
            return False
        runs_model = False
        for node in walk_scope(acc.loop.body):
            if isinstance(node, ast.Call) and _steps(identifier(node.func)):
                return False
            runs_model = runs_model or (isinstance(node, ast.Call) and self.is_model_call(node))
        if runs_model and any(helper is function for helper in evaluation_helpers(self.ctx)):
            return False
        texts = {ast.unparse(acc.target)}
        # The total stored into a container the function returns (`losses['D'] = loss_d`,
        # then `return losses`): a dict of named loss terms the caller sums and back-props.
        texts |= {
            ast.unparse(target.value)
            for node in walk_scope(function.body)
            if isinstance(node, ast.Assign)
            and self.derives_from(node.value, lambda n: any(_same_text(n, t) for t in texts))
            for target in node.targets
            if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name)
        }
        return any(
            isinstance(node, ast.Return)
            and node.value is not None
            and self.derives_from(node.value, lambda n: any(_same_text(n, t) for t in texts))
            for node in walk_scope(function.body)
        )

    def innermost_loop(self, node: ast.AST) -> ast.For | ast.While | ast.AsyncFor | None:
        for anc in self.ctx.ancestors(node):
            if isinstance(anc, ast.For | ast.While | ast.AsyncFor):
                return anc
            if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
                return None
        return None

    def _assigned_in(
        self, target: ast.expr, loop: ast.For | ast.While | ast.AsyncFor, skip: ast.AST
    ) -> bool:
        """Whether the loop body re-binds `target` (or the dict it indexes) every iteration: a
        reset. One under a periodic guard (`if step % 100 == 0: total = 0`) still lets up to
        that many iterations' graphs pile up, so it is no reset."""
        texts = {ast.unparse(target)}
        if isinstance(target, ast.Subscript):
            texts.add(ast.unparse(target.value))
        for node in walk_scope(loop.body):
            if node is skip or not isinstance(node, ast.Assign | ast.AnnAssign):
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if node.value is not None and _accumulation_pair(node) is not None:
                continue
            if not any(ast.unparse(t) in texts for t in targets):
                continue
            if not self._periodic(node, loop) and not self._first_value(node, loop, texts):
                return True
        return False

    def _first_value(self, node: ast.AST, loop: ast.AST, texts: set[str]) -> bool:
        """`node` binds the accumulator's first value under `if acc is None:` (a moving
        average started from the first loss): it runs once, no reset."""
        for anc in self.ctx.ancestors(node):
            if anc is loop:
                return False
            if isinstance(anc, ast.If) and _is_none_test(anc.test, texts):
                return node in walk_scope(anc.body)
        return False

    def _periodic(self, node: ast.AST, loop: ast.AST) -> bool:
        child = node
        for anc in self.ctx.ancestors(node):
            if anc is loop:
                return False
            if isinstance(anc, ast.If) and child is not anc.test and is_periodic_guard(anc.test):
                return True
            child = anc
        return False

    def is_backpropagated(
        self, target: ast.expr, within: ast.AST | None = None, history: bool = False
    ) -> bool:
        """Whether some `.backward()`/`autograd.grad` in the module (or only those inside
        `within`) runs on a value derived from `target` (summing micro-batch losses before one
        backward is intended). A backward that ran before a name's binding, with no loop
        around both to bring it back, does not see it (`loss_swap.backward()`, then
        `loss_swap = loss_swap.item() - nll` for the log). With `history` (a list appended to
        every iteration), a backward of one element picked by a constant index
        (`losses[-1].backward()`) does not count: it needs the newest loss only, and the list
        keeps the graphs of all the others."""
        for call in self._backward_calls:
            if within is not None and not _inside(call, within):
                continue
            if self._before_binding(call, target):
                continue
            receivers: list[ast.expr] = list(call.args)
            if isinstance(call.func, ast.Attribute):
                receivers.append(call.func.value)
            if history:
                receivers = [r for r in receivers if not _one_element_of(r, target)]
            if any(self.computed_from(receiver, target) for receiver in receivers):
                return True
            if self._passed_to_backward(call, receivers, target):
                return True
        return False

    def _passed_to_backward(
        self, call: ast.Call, receivers: list[ast.expr], target: ast.expr
    ) -> bool:
        """`call` back-propagates a parameter of its function, and a call of that function
        passes a value computed from `target` there (ACER's `_update_networks(..., policy_loss
        + value_loss, optimiser)`, whose body runs `loss.backward()`). One call deep."""
        function = self.ctx.enclosing_function(call)
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            return False
        params = [a.arg for a in (*function.args.posonlyargs, *function.args.args)]
        for index, name in enumerate(params):
            if not any(self.computed_from(r, ast.Name(id=name)) for r in receivers):
                continue
            for site in self.ctx.calls.call_sites(function):
                if isinstance(target, ast.Name) and not self._same_function(site, target):
                    continue  # another function's local of the same name
                bound = _argument(site, name, index, bound_self=params[0] in ("self", "cls"))
                if bound is not None and self.computed_from(bound, target):
                    return True
        return False

    def _before_binding(self, call: ast.Call, target: ast.expr) -> bool:
        """`call` runs before `target` (a name being bound) in one function and no loop
        holds both."""
        if not isinstance(target, ast.Name) or not isinstance(target.ctx, ast.Store):
            return False
        if call.lineno >= target.lineno:
            return False
        ctx = self.ctx
        if ctx.enclosing_function(call) is not ctx.enclosing_function(target):
            return False
        loops = {
            id(a)
            for a in ctx.ancestors(target)
            if isinstance(a, ast.For | ast.While | ast.AsyncFor)
        }
        return not any(id(a) in loops for a in ctx.ancestors(call))

    def _same_function(self, node: ast.AST, other: ast.AST) -> bool:
        return self.ctx.enclosing_function(node) is self.ctx.enclosing_function(other)

    def computed_from(self, expr: ast.expr, target: ast.expr) -> bool:
        """Whether `expr` is computed from the accumulator `target`, through any number of
        names (`loss = actor + critic`, `critic = advantage.pow(2).mean()`, `advantage =
        returns - values`), each name's bindings looked at once."""
        text = ast.unparse(target)
        frontier, seen = [expr], set[str]()
        while frontier and len(seen) < _MAX_NAMES_FOLLOWED:
            expr = frontier.pop()
            for sub in walk_scope(expr) if not isinstance(expr, ast.Name) else [expr]:
                if _same_text(sub, text):
                    return True
                if isinstance(sub, ast.Name) and sub.id not in seen:
                    seen.add(sub.id)
                    frontier.extend(self.definitions(sub))
        return False

    def has_backward(self) -> bool:
        """Whether the module calls `.backward()`/`autograd.grad` anywhere."""
        return bool(self._backward_calls)

    @cached_property
    def _backward_calls(self) -> list[ast.Call]:
        calls: list[ast.Call] = []
        for node in self.nodes(ast.Call):
            qual = self.qualname_of(node) or ""
            if identifier(node.func) in ("backward", "manual_backward") or qual in (
                "torch.autograd.backward",
                "torch.autograd.grad",
            ):
                calls.append(node)
        return calls


def _argument(call: ast.Call, name: str, index: int, bound_self: bool) -> ast.expr | None:
    """What `call` passes for the parameter `name` at `index` (a method called on an object
    passes `self` itself)."""
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    if bound_self and isinstance(call.func, ast.Attribute):
        index -= 1
    if 0 <= index < len(call.args) and not isinstance(call.args[index], ast.Starred):
        return call.args[index]
    return None


class Accumulation:
    """One accumulation site: `node` adds `value` into `target` inside `loop`."""

    __slots__ = ("loop", "node", "target", "value")

    def __init__(
        self,
        node: ast.AST,
        target: ast.expr,
        value: ast.expr,
        loop: ast.For | ast.While | ast.AsyncFor,
    ) -> None:
        self.node = node
        self.target = target
        self.value = value
        self.loop = loop


_MAX_NAMES_FOLLOWED = 64


def _inside(node: ast.AST, scope: ast.AST) -> bool:
    start, end = getattr(scope, "lineno", 0), getattr(scope, "end_lineno", None) or 0
    return start <= getattr(node, "lineno", -1) <= end


def _same_text(node: ast.AST, text: str) -> bool:
    if isinstance(node, ast.Name):  # most nodes asked: a name's text is its identifier
        return node.id == text
    return _is_accumulator(node) and ast.unparse(node) == text


def _is_accumulator(node: ast.AST) -> bool:
    """`total`, `self.total`, `history["loss"]`, `totals[key]` (a constant or a plain name as
    the key), not `x[i + 1]`."""
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant | ast.Name) and _is_accumulator(node.value)
    return isinstance(node, ast.Name | ast.Attribute)


def _iterates_keys_of(loop: ast.AST, target: ast.expr) -> bool:
    """`for k, v in d.items()` / `for k in d` whose key indexes the accumulator `target`."""
    if not isinstance(target, ast.Subscript) or not isinstance(target.slice, ast.Name):
        return False
    if not isinstance(loop, ast.For | ast.AsyncFor):
        return False
    key = target.slice.id
    return any(isinstance(n, ast.Name) and n.id == key for n in walk_tree(loop.target))


def _moved_every_iteration(key: str, loop: ast.For | ast.While | ast.AsyncFor) -> bool:
    """`key` is the loop's own variable (`for step, batch in enumerate(loader)`) or a counter
    its body increments (`step += 1`)."""
    if isinstance(loop, ast.For | ast.AsyncFor) and any(
        isinstance(n, ast.Name) and n.id == key for n in walk_tree(loop.target)
    ):
        return True
    return added_to_in(loop.body, key)


_CONTAINER_CALLS = frozenset({"dict", "list", "defaultdict", "OrderedDict"})


def _container_literal(value: ast.expr) -> bool:
    """`{}`, `[]`, `[None] * n`, `dict()`, `defaultdict(list)`: a plain container."""
    if isinstance(value, ast.Dict | ast.List):
        return True
    if isinstance(value, ast.BinOp) and isinstance(value.op, ast.Mult):
        return isinstance(value.left, ast.List) or isinstance(value.right, ast.List)
    return isinstance(value, ast.Call) and identifier(value.func) in _CONTAINER_CALLS


def _is_none_test(test: ast.expr, texts: set[str]) -> bool:
    return (
        isinstance(test, ast.Compare)
        and len(test.ops) == 1
        and isinstance(test.ops[0], ast.Is)
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value is None
        and ast.unparse(test.left) in texts
    )


def _reads_as(side: ast.expr, target: ast.expr, text: str) -> bool:
    """`side` is the target itself, or the target scaled by a number (`0.9 * a`, `a * beta`)."""
    if type(side) is type(target) and ast.unparse(side) == text:
        return True
    if not (isinstance(side, ast.BinOp) and isinstance(side.op, ast.Mult)):
        return False
    for own, factor in ((side.left, side.right), (side.right, side.left)):
        scalar = isinstance(factor, ast.Constant | ast.Name | ast.Attribute)
        if scalar and type(own) is type(target) and ast.unparse(own) == text:
            return True
    return False


def _accumulation_pair(node: ast.AST) -> tuple[ast.expr, ast.expr] | None:
    """(accumulator, added value) for `a += v`, `a = a + v`, `a = 0.9 * a + 0.1 * v` (a
    moving average keeps every term it was given, decayed), `a.append(v)`; else None."""
    if isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Add):
        if _is_accumulator(node.target):
            return node.target, node.value
    elif isinstance(node, ast.Assign) and len(node.targets) == 1:
        target, value = node.targets[0], node.value
        if (
            _is_accumulator(target)
            and isinstance(value, ast.BinOp)
            and isinstance(value.op, ast.Add)
        ):
            # Only a side of the target's own kind can read the same: the stdlib's unparse
            # recurses per level, and a long `loss = a + b + ...` would exhaust the stack.
            text = ast.unparse(target)
            if _reads_as(value.left, target, text):
                return target, value.right
            if _reads_as(value.right, target, text):
                return target, value.left
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        receiver = node.func.value
        appends = node.func.attr in ("append", "extend") and len(node.args) == 1
        if appends and _is_accumulator(receiver):
            return receiver, node.args[0]
    return None


def _one_element_of(expr: ast.expr, container: ast.expr) -> bool:
    """`losses[-1]`, `losses[0]`: one element of `container` picked by a constant index."""
    if not isinstance(expr, ast.Subscript) or ast.unparse(expr.value) != ast.unparse(container):
        return False
    index = expr.slice
    if isinstance(index, ast.UnaryOp) and isinstance(index.op, ast.USub):
        index = index.operand
    return isinstance(index, ast.Constant) and isinstance(index.value, int)
