"""host-sync-in-step: a device-to-host copy on every training step."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.analysis.defuse import identifier
from torchdoctor.agent.checks.analysis.vocabulary import ENVIRONMENT_HINTS, ENVIRONMENT_STEPS
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import TRAINING_LOOP_TEXT, walk_tree
from torchdoctor.agent.checks.patterns import under_periodic_guard
from torchdoctor.agent.models import Severity

_SYNC_METHODS = frozenset({"item", "cpu", "numpy", "tolist"})
_TENSORISH = re.compile(r"loss|acc|correct|pred|logit|output|grad|norm", re.IGNORECASE)
_VALUE_TESTS = frozenset({"torch.isnan", "torch.isinf", "torch.isfinite"})
_VALUE_TEST_NAMES = tuple(sorted(q.rpartition(".")[2] for q in _VALUE_TESTS))
"""A call resolves to one of `_VALUE_TESTS` only in a text that names it (the call's own
attribute, or the import that aliases it)."""
"""Elementwise tests whose (tensor) result a branch must read on the host."""


class HostSyncInStep(Rule):
    """Detects `.item()`, `.cpu()`, `.numpy()`, `.tolist()` and `float(tensor)` executed on every
    training step (in the training loop's body or a function it calls, Lightning's
    `training_step` included), and the implicit ones: a branch on `torch.isnan(...)` /
    `isinf` / `isfinite` (`if`, `while`, `assert`), and the tensor a step calls `.backward()`
    on formatted into a string (an f-string, `'%.3f' % loss`, `'{:.3f}'.format(loss)`),
    printed, or handed to TensorBoard's `add_scalar` (which reads it to the host).

    Why it matters: each one waits for the GPU to finish all queued work and copies the value
    to the host, so the CPU cannot queue the next step ahead: the GPU idles between steps.
    Logging under `if step % N == 0:` is fine and is not reported (a guard around the backward
    pass itself, `if global_step % train_frequency == 0:`, makes the step periodic: reads in
    it still run on every step), nor logging after an early exit on the other steps (`if not
    should_log(step): return`), nor a read in a branch that stops the run (a non-finite-loss
    check whose arms raise or return), nor a read in full-batch training (an epoch loop whose step
    draws no batch: a GCN trained on the whole graph steps once per epoch), nor is a read
    whose value an environment's `step()` takes (a reinforcement-learning rollout: the
    simulator runs on the host, so the policy's actions must come back every step whatever
    the code does).

    Example:
        for x, y in loader:
            loss = criterion(model(x), y)
            ...
            running_loss += loss.item()

    Fix: accumulate on the device (`running_loss += loss.detach()`) and read the value every N
    steps or once per epoch (`running_loss.item()` after the loop).
    """

    id = "host-sync-in-step"
    point = 6
    severity = Severity.MEDIUM
    title = "Host-device synchronisation on every training step"
    items: ClassVar[tuple[str, ...]] = ("6.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (
        ast.Call,
        ast.If,
        ast.While,
        ast.Assert,
        ast.FormattedValue,
        ast.BinOp,
    )
    call_names: ClassVar[frozenset[str]] = _SYNC_METHODS | {
        "float",
        "print",
        "format",
        "add_scalar",
    }
    triggers = TRAINING_LOOP_TEXT  # finish() needs a training loop

    def __init__(self) -> None:
        self.candidates: list[tuple[ast.expr, str]] = []
        """Each sync and what to call it."""
        self.printed: list[tuple[ast.Name, str]] = []
        """Names formatted or printed: a sync when the name is the step's loss tensor."""

    def applies(self, ctx: ModuleContext) -> bool:
        return bool(ctx.loops.training_loops)

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        if isinstance(node, ast.If | ast.While | ast.Assert):
            if not any(name in ctx.source for name in _VALUE_TEST_NAMES):
                return  # no call in the module can resolve to one: spares walking every test
            tested = next(
                (
                    call
                    for call in walk_tree(node.test)
                    if isinstance(call, ast.Call) and ctx.call_qualname(call) in _VALUE_TESTS
                ),
                None,
            )
            if tested is not None:
                name = (ctx.call_qualname(tested) or "").removeprefix("torch.")
                self.candidates.append((node.test, f"a branch on torch.{name}(...)"))
            return
        if isinstance(node, ast.FormattedValue):
            if isinstance(node.value, ast.Name):
                self.printed.append((node.value, "a tensor formatted into a string"))
            return
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.Mod) and _is_text(node.left):  # `'%.3f' % loss`
                values = node.right.elts if isinstance(node.right, ast.Tuple) else [node.right]
                self.printed += [
                    (v, "a tensor formatted into a string")
                    for v in values
                    if isinstance(v, ast.Name)
                ]
            return
        assert isinstance(node, ast.Call)
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "format" and _is_text(func.value):
            self.printed += [
                (a, "a tensor formatted into a string")
                for a in [*node.args, *(k.value for k in node.keywords)]
                if isinstance(a, ast.Name)
            ]
        elif isinstance(func, ast.Attribute) and func.attr == "add_scalar":
            value = node.args[1] if len(node.args) > 1 else None
            value = next((k.value for k in node.keywords if k.arg == "scalar_value"), value)
            if isinstance(value, ast.Name):
                self.printed.append((value, "a tensor logged with `add_scalar`"))
        elif isinstance(func, ast.Attribute):
            if (
                func.attr in _SYNC_METHODS
                and not node.args
                and not node.keywords
                and not (func.attr == "numpy" and _is_cpu_call(func.value))
                and not _numpy_value(ctx, func.value)
            ):
                self.candidates.append((node, f"`{func.attr}`"))
        elif isinstance(func, ast.Name) and func.id == "print":
            self.printed += [(a, "a printed tensor") for a in node.args if isinstance(a, ast.Name)]
        elif isinstance(func, ast.Name) and func.id == "float" and len(node.args) == 1:
            arg = node.args[0]
            if isinstance(
                arg, ast.Name | ast.Attribute | ast.Subscript | ast.Call
            ) and _TENSORISH.search(ast.unparse(arg)[:60]):
                self.candidates.append((node, "`float`"))

    def finish(self, ctx: ModuleContext) -> None:
        if not ctx.loops.training_loops:
            return
        found = self.candidates + [
            (name, what) for name, what in self.printed if _is_backward_tensor(ctx, name)
        ]
        found.sort(key=lambda entry: (entry[0].lineno, entry[0].col_offset))
        reported: set[int] = set()  # one finding per statement (a print of five losses)
        for node, what in found:
            statement = _statement_of(ctx, node)
            if id(statement) in reported or not ctx.loops.in_training_step(node):
                continue
            loop = ctx.loops.loop_containing(node)
            stop = loop.node if loop is not None else ctx.enclosing_function(node)
            periodic = under_periodic_guard(ctx, node, stop, beside_the_step=True)
            if periodic or _feeds_environment(ctx, node) or ctx.loops.per_epoch_only(node):
                continue
            reported.add(id(statement))
            ctx.report(
                self,
                node,
                f"{what} on every training step forces a GPU->CPU sync: the device idles "
                "until the host catches up",
            )


def _numpy_value(ctx: ModuleContext, expr: ast.expr) -> bool:
    """`np.finfo(np.float32).eps`, `np.array(x).mean()`: a value NumPy made, whose `.item()`
    or `.tolist()` reads host memory (an actor-critic's `eps = np.finfo(...).eps.item()`)."""
    while isinstance(expr, ast.Attribute | ast.Subscript | ast.Call):
        if isinstance(expr, ast.Call):
            qual = ctx.call_qualname(expr) or ""
            if qual.startswith("numpy."):
                return True
            expr = expr.func
        else:
            expr = expr.value
    return False


def _is_text(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def _is_backward_tensor(ctx: ModuleContext, name: ast.Name) -> bool:
    """`name` is what its function calls `.backward()` on, and every value it is bound to is a
    call's result other than a host read (`loss = loss.item()` makes it a float)."""
    function = ctx.enclosing_function(name)
    if function is None:
        return False
    receivers = ctx.memo_table("host_sync_in_step.backward_receivers")
    names = receivers.get(id(function))
    if names is None:
        names = receivers[id(function)] = {
            node.func.value.id
            for node in walk_tree(function)
            if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "backward"
            and isinstance(node.func.value, ast.Name)
        }
    return name.id in names and all(_stays_a_tensor(v) for v in ctx.flow.definitions(name))


def _stays_a_tensor(value: ast.expr) -> bool:
    if not isinstance(value, ast.Call):
        return False
    func = value.func
    called = func.attr if isinstance(func, ast.Attribute) else ""
    if isinstance(func, ast.Name):
        called = func.id
    return called not in _SYNC_METHODS | {"float", "int"}


def _feeds_environment(ctx: ModuleContext, node: ast.expr) -> bool:
    """The read value (through further methods on it: `.cpu().numpy().clip(lo, hi)`) is passed
    to an environment's step, directly or through the name it is bound to in this function."""
    child: ast.AST = node
    parent = ctx.parents.get(child)
    while isinstance(parent, ast.Attribute | ast.Subscript) and parent.value is child:
        call = ctx.parents.get(parent)
        if isinstance(parent, ast.Attribute):
            if not (isinstance(call, ast.Call) and call.func is parent):
                return False
            parent = call
        child, parent = parent, ctx.parents.get(parent)
    if isinstance(parent, ast.Call) and any(a is child for a in parent.args):
        return _is_environment_step(parent)
    if not (isinstance(parent, ast.Assign) and parent.value is child):
        return False
    function = ctx.enclosing_function(node)
    names = {t.id for t in parent.targets if isinstance(t, ast.Name)}
    return any(
        isinstance(use := ctx.parents.get(read), ast.Call)
        and any(a is read for a in use.args)
        and _is_environment_step(use)
        for name in names
        for read in ctx.flow.reads_of(name)
        if ctx.enclosing_function(read) is function
    )


def _is_environment_step(call: ast.Call) -> bool:
    """`envs.step(actions)`, `self.env.step(a)`: a simulator advanced with host values."""
    func = call.func
    if not isinstance(func, ast.Attribute) or func.attr not in ENVIRONMENT_STEPS:
        return False
    receiver = identifier(func.value).lower()
    return any(hint in receiver for hint in ENVIRONMENT_HINTS)


def _statement_of(ctx: ModuleContext, node: ast.AST) -> ast.AST:
    return next((a for a in ctx.ancestors(node) if isinstance(a, ast.stmt)), node)


def _is_cpu_call(node: ast.expr) -> bool:
    """`t.cpu().numpy()`: the sync already happened at `.cpu()`, report it once."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("cpu", "detach")
    )
