"""loss-graph-accumulation: a loss tensor is summed or stored across iterations with its graph."""

from __future__ import annotations

import ast
from typing import Any, ClassVar

from torchdoctor.agent.checks.analysis.accumulation import Accumulation
from torchdoctor.agent.checks.analysis.meters import accumulating_methods, kept_state
from torchdoctor.agent.checks.analysis.project import (
    Pending,
    ProjectIndex,
    Property,
    class_symbols,
    defer,
    imported_classes,
    is_package_init,
    project_symbol,
    publish,
)
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.checks.loops import walk_scope
from torchdoctor.agent.models import Severity


class LossGraphAccumulation(Rule):
    """Detects a loss that is accumulated across loop iterations while still attached to the
    autograd graph: `running_loss += loss`, `total = total + loss`, `losses.append(loss)`,
    `step_log[step] = loss` (a dict or list filled under a key the loop moves every
    iteration), where `loss` comes from a criterion or loss function (directly or through
    variables and local functions, or a value an engine back-propagates:
    `accelerator.backward(loss)`) and was not passed through `.item()`, `.detach()` or
    `float()`.

    Why it matters: each stored tensor keeps its whole computation graph alive (activations
    included), so memory grows every step until the process runs out of memory; the PyTorch
    FAQ calls this "accumulating history across your training loop". Accumulation under
    `torch.no_grad()`/`inference_mode()`, into a variable reset every iteration, or into a
    total that is itself back-propagated (micro-batch losses summed before one backward), or
    into the total a loss function returns (one term per head or scale, back-propagated by its
    caller) is not reported.

    Also reported: a running extreme kept as the loss tensor (`if loss < best_loss:
    best_loss = loss` in a loop that calls `.backward()`, `best_loss` bound before it): the
    best batch's graph stays alive and the loop leaves a graph tensor where a number was
    meant. Not `loss.item()` or a detached value, nor under `torch.no_grad()`, nor a loop
    that does not back-propagate (an attack's search scoring candidates).

    Also reported: a loss handed to an object's method that keeps it (`losses.update(loss,
    n)` on a meter whose `update` does `self.sum += val * n`), the class in this file or in
    another one.

    Also reported: the value a training step of another file returns after back-propagating
    it (`cri = bpr.stageOne(users, pos, neg)` with `stageOne` ending in `loss.backward();
    ...; return loss`, the object of another file's class by construction or annotation,
    `bpr: utils.BPRLoss`; or an imported `train_step(...)`), summed across the loop: the
    project pass confirms the callee returns the back-propagated tensor itself (not
    `loss.item()`). So is the first element of a tuple such a step returns (`return loss,
    mape, rmse`, or `cast(Tensor, loss), n`), kept as `metrics[0]` or unpacked (`loss, n =
    step(...)`); not another element (`_, n = step(...)`, `metrics[1]`), nor a step that
    returns `loss.item()` first.

    Example:
        running_loss = 0.0
        for x, y in loader:
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            running_loss += loss

    Fix: accumulate a detached value: `running_loss += loss.detach()` (keeps the sum on the
    device, no sync), or `loss.item()` when a Python float is needed anyway.
    """

    id = "loss-graph-accumulation"
    point = 1
    severity = Severity.HIGH
    title = "Loss accumulated with its autograd graph"
    items: ClassVar[tuple[str, ...]] = ("1.4",)

    def applies(self, ctx: ModuleContext) -> bool:
        return _may_have_losses(ctx)

    def finish(self, ctx: ModuleContext) -> None:
        if "class " in ctx.source or is_package_init(ctx):
            publish(ctx)  # its meters' accumulating methods, for the modules using them
        if not _may_have_losses(ctx):
            return
        flow = ctx.flow
        self._kept_by_methods(ctx)
        self._running_extremes(ctx)
        for acc in flow.accumulations:
            if flow.grad_disabled_at(acc.node):
                continue
            if flow.graph_origin(acc.value) != "loss":
                self._defer_returned_losses(ctx, acc)
                continue
            if not flow.carried_across_iterations(acc) or flow.total_returned_by_loss_function(acc):
                continue
            if _loss_entry_detached(ctx, acc):
                continue
            target = ast.unparse(acc.target)
            if _never_read(ctx, acc):
                ctx.report(
                    self,
                    acc.node,
                    f"`{target}` collects `{ast.unparse(acc.value)}`, and nothing reads it "
                    "afterwards: no backward reaches these losses, so they train nothing (a "
                    "term left out of the total?), while their graphs stay in memory",
                    data={"accumulator": target, "value": ast.unparse(acc.value), "unread": True},
                )
                continue
            ctx.report(
                self,
                acc.node,
                f"`{target}` accumulates `{ast.unparse(acc.value)}`, which still holds the "
                "autograd graph: every iteration's graph stays in memory",
                data={"accumulator": target, "value": ast.unparse(acc.value), "fix": "detach"},
            )

    def _running_extremes(self, ctx: ModuleContext) -> None:
        """`if best_loss > loss: best_loss = loss` in a loop, `best_loss` bound before the loop
        and `loss` still holding its graph: the best batch's graph is kept across iterations,
        and the value the loop leaves behind is a graph tensor, not a number."""
        flow = ctx.flow
        for node in flow.nodes(ast.Assign):
            if len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
                continue
            target, value = node.targets[0], node.value
            if not isinstance(value, ast.Name):
                continue
            guard = ctx.parents.get(node)
            if not (
                isinstance(guard, ast.If)
                and node in guard.body
                and _compares(guard.test, target.id, value.id)
            ):
                continue
            loop = flow.innermost_loop(node)
            if loop is None or flow.grad_disabled_at(node) or not _trains(loop):
                continue
            if not _bound_before(ctx, target.id, loop):
                continue
            if flow.graph_origin(value) != "loss":
                continue
            ctx.report(
                self,
                node,
                f"`{target.id}` keeps `{value.id}`, the loss with its autograd graph, across "
                "iterations: the best batch's graph stays in memory and what the loop leaves "
                f"in `{target.id}` is a graph tensor; keep `{value.id}.item()` (or "
                f"`{value.id}.detach()`)",
                data={"accumulator": target.id, "value": value.id},
            )

    def _defer_returned_losses(self, ctx: ModuleContext, acc: Accumulation) -> None:
        """`cri = bpr.stageOne(users, pos, neg)`, then `aver_loss += cri`, with `stageOne` a
        method of another file's class (`bpr: utils.BPRLoss`) that back-propagates its loss
        and returns it with its graph: pending on the project pass finding it so."""
        value = acc.value
        first = False
        if isinstance(value, ast.Subscript) and isinstance(value.value, ast.Name):
            # `metrics = engine.train(x, y)`, then `train_loss.append(metrics[0])`
            if not (isinstance(value.slice, ast.Constant) and value.slice.value == 0):
                return
            name, first = value.value, True
        elif isinstance(value, ast.Name):
            name = value
        else:
            return
        bound = ctx.flow.reaching(name)
        if not isinstance(bound, ast.Call) or not ctx.flow.carried_across_iterations(acc):
            return
        position = _unpacked_position(ctx, bound, name.id) if not first else None
        if position not in (None, 0) or (first and _unpacked_position(ctx, bound, "") == -1):
            return
        first = first or position == 0
        symbols = _project_callees(ctx, bound)
        if not symbols:
            return  # (a total of such losses is no loss to back-propagate: they were)
        target = ast.unparse(acc.target)
        callee = ast.unparse(bound.func)
        shown = ast.unparse(value)
        found = ctx.finding(
            self,
            acc.node,
            f"`{target}` accumulates `{shown}`, the loss `{callee}` back-propagates and "
            "returns with its autograd graph: every iteration's graph stays in memory (return "
            "`loss.item()` or accumulate `.detach()`)",
            data={"accumulator": target, "value": shown, "fix": "detach"},
        )
        needs: Property = (
            "returns-backpropagated-loss-first" if first else "returns-backpropagated-loss"
        )
        for symbol in symbols if found is not None else []:
            defer(ctx, self.id, Pending(symbol=symbol, needs=needs, finding=found))

    def _kept_by_methods(self, ctx: ModuleContext) -> None:
        """`meter.update(loss, n)` in a loop, `meter` built before it from a class whose
        method keeps its first argument: this file's class is read, another file's is asked
        of the project pass."""
        flow = ctx.flow
        for call in flow.nodes(ast.Call):
            func = call.func
            if not (call.args and isinstance(func, ast.Attribute)):
                continue
            holder, entries = _meter_receiver(ctx, func.value)
            if holder is None or not isinstance(call.args[0], ast.Name):
                continue
            loop = flow.innermost_loop(call)
            if loop is None or flow.grad_disabled_at(call):
                continue
            if holder.id == "self":
                self._kept_by_own_method(ctx, call, func, loop)
                continue
            acc = Accumulation(call, holder, call.args[0], loop)
            # a model's output holds the graph as surely as a loss (semseg's PSPNet returns
            # its losses from `forward`: `output, main_loss, aux_loss = model(x, y)`)
            if flow.graph_origin(acc.value) is None or not flow.carried_across_iterations(acc):
                continue
            cls = flow.local_class(func.value) if entries is None else None
            if cls is not None:
                if func.attr in accumulating_methods(ctx, cls):
                    ctx.report(self, call, _kept_message(acc, func))
                continue
            constructors = list(flow.constructors(func.value)) if entries is None else entries
            local = [
                flow.classes[c.func.id]
                for c in constructors
                if isinstance(c.func, ast.Name) and c.func.id in flow.classes
            ]
            if local:
                if any(func.attr in accumulating_methods(ctx, c) for c in local):
                    ctx.report(self, call, _kept_message(acc, func))
                continue
            for constructor in constructors:
                symbols = class_symbols(ctx, constructor.func)
                found = ctx.finding(self, call, _kept_message(acc, func)) if symbols else None
                for symbol in symbols if found is not None else []:
                    pending = Pending(
                        symbol=f"{symbol}.{func.attr}", needs="accumulates-argument", finding=found
                    )
                    defer(ctx, self.id, pending)
                break

    def _kept_by_own_method(
        self, ctx: ModuleContext, call: ast.Call, func: ast.Attribute, loop: ast.AST
    ) -> None:
        """`self.update_average_loss(batch_average_loss, node_count)` in a trainer's loop,
        the method adding its argument into the trainer's own state
        (`self.accumulated_training_loss = self.accumulated_training_loss + loss * n`,
        ClusterGCN's): judged as that state accumulating the loss across the loop."""
        flow = ctx.flow
        cls = next((a for a in ctx.ancestors(call) if isinstance(a, ast.ClassDef)), None)
        method = accumulating_methods(ctx, cls).get(func.attr) if cls is not None else None
        state = kept_state(method) if method is not None else None
        if state is None or not isinstance(loop, ast.For | ast.While | ast.AsyncFor):
            return
        acc = Accumulation(call, state, call.args[0], loop)
        if flow.graph_origin(acc.value) != "loss" or not flow.carried_across_iterations(acc):
            return
        ctx.report(self, call, _kept_message(acc, func))

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        return ProjectIndex.from_facts(facts).confirmed(facts, cls.id)


def _unpacked_position(ctx: ModuleContext, call: ast.Call, name: str) -> int | None:
    """Where `name` sits in the tuple `call`'s result is unpacked into (`loss, n = f(...)`:
    0 for `loss`); None when the result is bound whole, -1 when unpacked but not into it."""
    assign = ctx.parents.get(call)
    if not (isinstance(assign, ast.Assign) and assign.value is call and len(assign.targets) == 1):
        return None
    target = assign.targets[0]
    if not isinstance(target, ast.Tuple | ast.List):
        return None
    for i, element in enumerate(target.elts):
        if isinstance(element, ast.Name) and element.id == name:
            return i
    return -1


def _project_callees(ctx: ModuleContext, call: ast.Call) -> list[str]:
    """What another file of the project a call runs: `train_step(...)` imported from it, or a
    method of an object of one of its classes (`trainer.step(...)` with `trainer =
    Trainer(...)`, or annotated: `bpr: utils.BPRLoss = loss_class`)."""
    func = call.func
    if isinstance(func, ast.Name):
        symbol = project_symbol(ctx, func)
        return [symbol] if symbol and func.id[:1].islower() else []
    if not isinstance(func, ast.Attribute):
        return []
    owner = func.value
    classes = imported_classes(ctx, owner) if isinstance(owner, ast.Name) else []
    if not classes and isinstance(owner, ast.Name):
        classes = _annotated_classes(ctx, owner)
    if classes:
        return [f"{cls}.{func.attr}" for cls in classes]
    symbol = project_symbol(ctx, func)
    return [symbol] if symbol and func.attr[:1].islower() else []


def _annotated_classes(ctx: ModuleContext, name: ast.Name) -> list[str]:
    """The project class a variable is annotated with in its function (`bpr: utils.BPRLoss =
    loss_class`, `trainer: Trainer`)."""
    scope = ctx.enclosing_function(name)
    found: list[str] = []
    for node in walk_scope(scope.body if scope is not None else ctx.tree.body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == name.id
            and (symbol := project_symbol(ctx, node.annotation)) is not None
            and symbol.rpartition(".")[2][:1].isupper()
            and symbol not in found
        ):
            found.append(symbol)
    return found


def _meter_receiver(
    ctx: ModuleContext, receiver: ast.expr
) -> tuple[ast.Name | None, list[ast.Call] | None]:
    """The name a meter is held under and, for one entry of a dict of meters
    (`avg_meters['loss']` with `avg_meters = {'loss': AverageMeter(), ...}`), the calls that
    built that entry; (name, None) for a meter held under its own name."""
    if isinstance(receiver, ast.Name):
        return receiver, None
    if not (
        isinstance(receiver, ast.Subscript)
        and isinstance(receiver.value, ast.Name)
        and isinstance(receiver.slice, ast.Constant)
    ):
        return None, None
    entries: list[ast.Call] = []
    for bound in ctx.flow.definitions(receiver.value):
        if not isinstance(bound, ast.Dict):
            return None, None
        for key, value in zip(bound.keys, bound.values, strict=True):
            same = isinstance(key, ast.Constant) and key.value == receiver.slice.value
            if same and isinstance(value, ast.Call):
                entries.append(value)
    return (receiver.value, entries) if entries else (None, None)


def _kept_message(acc: Accumulation, method: ast.Attribute) -> str:
    return (
        f"`{ast.unparse(method)}` keeps `{ast.unparse(acc.value)}`, which still "
        "holds the autograd graph: every iteration's graph stays in memory"
    )


_DETACHING = frozenset({"detach", "item", "cpu", "tolist", "numpy"})


def _loss_entry_detached(ctx: ModuleContext, acc: Accumulation) -> bool:
    """A step's output dict whose loss entry is replaced by a detached value before the dict
    is stored (`output["loss"] = output["loss"].detach()` then `outputs.append(output)`,
    packnet-sfm's trainer): the stored dict no longer holds that graph."""
    value = acc.value
    at = getattr(acc.node, "lineno", 0)
    if not isinstance(value, ast.Name):
        return False
    for node in walk_scope(acc.loop.body):
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
            continue
        target = node.targets[0]
        if node.lineno >= at or not (
            isinstance(target, ast.Subscript)
            and isinstance(target.value, ast.Name)
            and target.value.id == value.id
            and "loss" in ast.unparse(target.slice).lower()
        ):
            continue
        call = node.value
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr in _DETACHING
            and ast.unparse(call.func.value).startswith(ast.unparse(target))
        ):
            return True
    return False


def _never_read(ctx: ModuleContext, acc: Accumulation) -> bool:
    """A local accumulator its function never reads but to fill it (`value_loss.append(...)`
    in an actor-critic update whose total sums `policy_loss` twice)."""
    target = acc.target
    function = ctx.enclosing_function(acc.node)
    if not isinstance(target, ast.Name) or function is None:
        return False
    filling = [
        other.node
        for other in ctx.flow.accumulations
        if isinstance(other.target, ast.Name) and other.target.id == target.id
    ]
    for read in ctx.flow.reads_of(target.id):
        if ctx.enclosing_function(read) is not function:
            continue
        if not any(a in filling for a in [read, *ctx.ancestors(read)]):
            return False
    return True


def _may_have_losses(ctx: ModuleContext) -> bool:
    text = ctx.source
    return ("loss" in text or "criterion" in text) and (
        "+=" in text
        or "append" in text
        or "+ " in text
        or "update(" in text
        or " < " in text  # a running extreme: `if loss < best: best = loss`
        or " > " in text
    )


def _compares(test: ast.expr, first: str, second: str) -> bool:
    """`a > b`, `b < a`, `a >= b`... between the two names, and nothing else."""
    return (
        isinstance(test, ast.Compare)
        and len(test.ops) == 1
        and isinstance(test.ops[0], ast.Lt | ast.Gt | ast.LtE | ast.GtE)
        and isinstance(test.left, ast.Name)
        and isinstance(test.comparators[0], ast.Name)
        and {test.left.id, test.comparators[0].id} == {first, second}
    )


def _bound_before(ctx: ModuleContext, name: str, loop: ast.AST) -> bool:
    """An assignment to `name` in the loop's function (or module), above the loop."""
    fn = ctx.enclosing_function(loop)
    body = fn.body if fn is not None else ctx.tree.body
    line = getattr(loop, "lineno", 0)
    return any(
        isinstance(n, ast.Assign)
        and n.lineno < line
        and any(isinstance(t, ast.Name) and t.id == name for t in n.targets)
        for n in walk_scope(body)
    )


def _trains(loop: ast.AST) -> bool:
    """The loop back-propagates (`.backward()`) in its own body: a search loop that scores
    candidates with a `loss` callable under `no_grad` keeps no graph."""
    return any(
        isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "backward"
        for n in walk_scope(getattr(loop, "body", []))
    )
