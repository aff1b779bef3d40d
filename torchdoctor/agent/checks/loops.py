"""Finds training loops however they are written.

A training loop is the innermost `for`/`while` whose body, directly or through functions and
methods defined in the same module (transitively), calls `backward()` and an optimizer
`step()`, or updates the parameters by hand from their gradients (`for p in
model.parameters(): p -= lr * p.grad`: the step of from-scratch trainers). Lightning-style
`training_step` methods count as step bodies too (the framework owns the loop). Rules ask this
module instead of pattern-matching loops themselves.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

from torchdoctor.agent.checks.analysis.vocabulary import is_scheduler_name
from torchdoctor.agent.checks.module_text import Triggers

if TYPE_CHECKING:
    from torchdoctor.agent.checks.base import ModuleContext

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef
_SCOPE_KINDS = frozenset({ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda})
"""The nodes `walk_scope` does not enter. The parser makes no subclasses of them, so a set
lookup of a child's class tests it (walk_scope tests every child it meets)."""
_OWNER_NODES = (ast.For, ast.AsyncFor, ast.While, ast.FunctionDef, ast.AsyncFunctionDef)
_BACKWARD_METHODS = {"backward", "manual_backward"}
TRAINING_TEXT = Triggers(("backward", "training_step"))
"""A module with none of these words has no training loop (`LoopAnalysis.training_loops`
needs `backward` and a step, `step(` or `.grad`, or a `training_step`): a rule that only
reports in training loops takes it as its `triggers`."""
STEP_TEXT = ("step(", ".grad", "step_and_update")
"""A module that steps holds one of these: an optimizer's `step(`, an optimizer wrapper's
`step_and_update_lr()` or a manual update's `.grad` (rules that judge a step gate on them, never
on `step(` alone)."""
TRAINING_LOOP_TEXT = Triggers(("training_step",), all_of=(("backward",), STEP_TEXT))
"""Exactly what `LoopAnalysis.training_loops` asks of the text before it looks for a loop
(`backward` and one of `STEP_TEXT`, or a `training_step`): the triggers of a rule that does
nothing, reports nothing and applies nowhere without a training loop. Library code says
`backward` in autograd functions and hooks far more often than it steps (torch's sources:
480 modules hold `backward`, 147 this)."""


# Fields that hold identifiers, flags, comments or constants, never nodes: walks skip
# reading them (`arg` and `alias` nodes then have at most one field to read, or none).
_SCALAR_FIELDS = frozenset(
    {
        "id",
        "attr",
        "arg",
        "name",
        "asname",
        "module",
        "level",
        "kind",
        "is_async",
        "conversion",
        "type_comment",
        "rest",
        "tag",
    }
)
_NODE_FIELDS: dict[type, tuple[str, ...]] = {}


def node_fields(kind: type) -> tuple[str, ...]:
    """The fields of a node type that can hold child nodes, in `_fields` order (cached)."""
    fields = _NODE_FIELDS.get(kind)
    if fields is None:
        declared: tuple[str, ...] = () if kind is ast.Constant else getattr(kind, "_fields", ())
        fields = _NODE_FIELDS[kind] = tuple(f for f in declared if f not in _SCALAR_FIELDS)
    return fields


def walk_tree(root: ast.AST) -> Iterator[ast.AST]:
    """`walk_tree(root)`: the same nodes in the same breadth-first order, about three times
    faster (no `iter_child_nodes`/`iter_fields` generators, no scalar fields read). Rules and
    analyses walk statements and expressions tens of thousands of times per module."""
    todo: list[ast.AST] = [root]
    known = _NODE_FIELDS
    node_class = ast.AST
    for node in todo:  # a list iterator sees the children appended behind it: a queue
        fields = known.get(node.__class__)
        if fields is None:
            fields = node_fields(node.__class__)
        for name in fields:
            value = getattr(node, name, None)
            if value.__class__ is list:
                for item in value:
                    if isinstance(item, node_class):
                        todo.append(item)
            elif isinstance(value, node_class):
                todo.append(value)
        yield node


ScopeMemo = dict[int, tuple[object, list[ast.AST]]]
_SCOPE_MEMO: ContextVar[ScopeMemo | None] = ContextVar("scope_memo", default=None)
_Span = tuple[ast.AST, list[ast.AST], int, int]
_SPANS: ContextVar[dict[int, _Span] | None] = ContextVar("scope_spans", default=None)


@contextmanager
def scope_memo(table: ScopeMemo) -> Iterator[None]:
    """`walk_scope` keeps its walks in `table` (a module context's memo table) while this is
    open: the rules and analyses of one module walk the same function and loop bodies again
    and again (each node about four times over torch's own sources, 18% of the whole pass).
    A walk also remembers where each statement's own nodes lie in it (a pre-order walk keeps
    a subtree together), so a loop or branch body inside a function already walked is cut
    from that walk, not walked again (half the nodes `walk_scope` met on torch's sources)."""
    token = _SCOPE_MEMO.set(table)
    spans = _SPANS.set({})
    try:
        yield
    finally:
        _SPANS.reset(spans)
        _SCOPE_MEMO.reset(token)


def walk_scope(nodes: list[ast.stmt] | ast.AST) -> Iterator[ast.AST]:
    """Every node under `nodes`, not descending into nested functions, classes or lambdas
    (the nodes of a list are each walked so, in turn, even when one is a function).

    Pre-order, children in `ast.iter_child_nodes` order. Inside `scope_memo`, each body or
    node is walked once per module (keyed by identity; the memo keeps the key alive, so an
    identity is never reused while it is kept)."""
    memo = _SCOPE_MEMO.get()
    if memo is None:
        return iter(_walk_scope(nodes))
    kept = memo.get(id(nodes))
    if kept is None or kept[0] is not nodes:
        kept = memo[id(nodes)] = (nodes, _walk_scope(nodes))
    return iter(kept[1])


def _walk_scope(nodes: list[ast.stmt] | ast.AST) -> list[ast.AST]:
    """`walk_scope`'s nodes: a list's are its nodes' walks one after the other; a node's are
    cut from an enclosing walk already made in this module (`scope_memo`), else walked."""
    spans = _SPANS.get()
    if not isinstance(nodes, list):
        return _spanned(nodes, spans) if spans is not None else _walk_one(nodes, None)
    found: list[ast.AST] = []
    for node in nodes:
        found += _spanned(node, spans) if spans is not None else _walk_one(node, None)
    return found


def _spanned(node: ast.AST, spans: dict[int, _Span]) -> list[ast.AST]:
    span = spans.get(id(node))
    if span is not None and span[0] is node:
        return span[1][span[2] : span[3]]
    return _walk_one(node, spans)


def _walk_one(root: ast.AST, spans: dict[int, _Span] | None) -> list[ast.AST]:
    """`root` and every node under it but nested functions, classes and lambdas (`root` is
    walked whatever it is), read straight from the node-bearing fields. With `spans`, each
    statement met records where its nodes lie in the list returned (the list is never
    changed): the nodes of its own walk, since it is no scope of its own."""
    found: list[ast.AST] = []
    stack: list[ast.AST | tuple[ast.AST, int]] = [root]
    known = _NODE_FIELDS
    scopes = _SCOPE_KINDS
    node_class, stmt_class = ast.AST, ast.stmt
    while stack:
        node = stack.pop()
        if node.__class__ is tuple:  # the end of a statement's nodes: (statement, start)
            statement, first = node
            spans[id(statement)] = (statement, found, first, len(found))  # type: ignore[index]
            continue
        if spans is not None and isinstance(node, stmt_class):
            stack.append((node, len(found)))
        found.append(node)  # type: ignore[arg-type]
        fields = known.get(node.__class__)
        if fields is None:
            fields = node_fields(node.__class__)
        if not fields:
            continue
        children: list[ast.AST] = []
        for name in fields:
            value = getattr(node, name, None)
            if value.__class__ is list:
                for item in value:
                    if item.__class__ not in scopes and isinstance(item, node_class):
                        children.append(item)
            elif value.__class__ not in scopes and isinstance(value, node_class):
                children.append(value)
        children.reverse()
        stack.extend(children)
    return found


def named_calls(ctx: ModuleContext, body: list[ast.stmt]) -> Iterator[ast.Call]:
    """`walk_scope(body)`'s calls of a name or an attribute, in its order: the calls of each
    statement in turn (a pre-order walk finishes one statement before the next), each
    statement walked once per module however many loops around it and rules ask."""
    memo = ctx.memo_table("loops.named_calls")
    for stmt in body:
        calls = memo.get(id(stmt))
        yield from calls if calls is not None else statement_calls(stmt, memo)


def statement_named_calls(ctx: ModuleContext, stmt: ast.stmt) -> list[ast.Call]:
    """`named_calls(ctx, [stmt])` as the module's shared list (never to be changed)."""
    memo = ctx.memo_table("loops.named_calls")
    calls = memo.get(id(stmt))
    return calls if calls is not None else statement_calls(stmt, memo)


def statement_calls(stmt: ast.stmt, memo: dict[int, list[ast.Call]]) -> list[ast.Call]:
    """The calls of a name or an attribute (`f(x)`, `model.fc(x)`) among `walk_scope(stmt)`'s
    nodes, in its order, kept in `memo` (a module context's memo table) for `stmt` and for
    every statement nested in it: a statement's list is its own expressions' calls around
    the lists of the statements inside it, so loops nested in loops are walked once, not
    once per loop around them that rules ask about."""
    found: list[ast.Call] = []
    stack: list[ast.AST] = [stmt]
    known = _NODE_FIELDS
    scopes = _SCOPE_KINDS
    node_class, stmt_class, call_class = ast.AST, ast.stmt, ast.Call
    while stack:
        node = stack.pop()
        if node is not stmt and isinstance(node, stmt_class):
            kept = memo.get(id(node))
            found += kept if kept is not None else statement_calls(node, memo)
            continue
        if node.__class__ is call_class and isinstance(node.func, ast.Name | ast.Attribute):
            found.append(node)
        fields = known.get(node.__class__)
        if fields is None:
            fields = node_fields(node.__class__)
        children: list[ast.AST] = []
        for name in fields:
            value = getattr(node, name, None)
            if value.__class__ is list:
                for item in value:
                    if item.__class__ not in scopes and isinstance(item, node_class):
                        children.append(item)
            elif value.__class__ not in scopes and isinstance(value, node_class):
                children.append(value)
        children.reverse()
        stack += children
    memo[id(stmt)] = found
    return found


def nodes_of(ctx: ModuleContext, *kinds: type[ast.AST]) -> list[ast.AST]:
    """Every node of the given types in the module, in source order.

    Read from the engine's single walk (`ctx.nodes_by_type()`, no second tree walk) and shared
    by all rules; lists merged over several types are kept for the module being analysed only.
    The index is complete only after the walk, so call this (and the analyses built on it) from
    `finish()`, never from `visit()`.
    """
    by_type = ctx.nodes_by_type()
    if len(kinds) == 1:
        return by_type.get(kinds[0], [])
    memo = ctx.memo_table("loops.nodes_of")
    merged = memo.get(kinds)
    if merged is None:
        merged = [node for kind in kinds for node in by_type.get(kind, ())]
        merged.sort(key=position)
        memo[kinds] = merged
    return merged


def summed_names(ctx: ModuleContext) -> frozenset[str]:
    """Names summed with `+=` anywhere in the module (`total += loss`), from the walk's node
    index: what rules about running totals look for before walking any loop."""
    memo = ctx.memo_table("loops.summed_names")
    if "" not in memo:
        memo[""] = frozenset(
            n.target.id
            for n in nodes_of(ctx, ast.AugAssign)
            if isinstance(n, ast.AugAssign)
            and isinstance(n.op, ast.Add)
            and isinstance(n.target, ast.Name)
        )
    found: frozenset[str] = memo[""]
    return found


def added_to_in(body: list[ast.stmt], name: str) -> bool:
    """Whether `body` (not the functions it defines) adds to `name` with `+=`: a running
    total (`total += loss`) or a counter (`step += 1`)."""
    return any(
        isinstance(n, ast.AugAssign)
        and isinstance(n.op, ast.Add)
        and isinstance(n.target, ast.Name)
        and n.target.id == name
        for n in walk_scope(body)
    )


def _in_body(child: ast.AST, owner: ast.AST) -> bool:
    """`child in owner.body` for a direct child of a loop or function, without scanning the body:
    its statements are in `body` unless in a loop's `else:`, everything else is not."""
    if not isinstance(child, ast.stmt):
        return False
    orelse: list[ast.stmt] = getattr(owner, "orelse", [])
    return not orelse or child not in orelse


def position(node: ast.AST) -> tuple[int, int]:
    return getattr(node, "lineno", 0), getattr(node, "col_offset", 0)


_LOG_GUARD_NAME = re.compile(r"log|print|verbose|every|interval|debug|report|display|freq", re.I)


def mentions_modulo(expr: ast.AST) -> bool:
    return any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.Mod) for n in walk_tree(expr))


def phase_constant(node: ast.expr) -> bool:
    """A value that names one phase whatever runs: a literal (`'train'`, `0`) or an enum
    member (`LoopPhase.TRAIN`, a capitalised class's attribute)."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str | int) and not isinstance(node.value, bool)
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id[:1].isupper()
    )


def phase_equality(test: ast.expr) -> tuple[str, str] | None:
    """(name, constant) of a test that a phase parameter equals one phase (`phase ==
    LoopPhase.TRAIN`, `mode == 'train'`): pytorch-GAT's `main_loop(phase, epoch)` steps the
    optimizer only for the training phase."""
    if (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and len(test.ops) == 1
        and isinstance(test.ops[0], ast.Eq)
        and phase_constant(test.comparators[0])
    ):
        return test.left.id, ast.unparse(test.comparators[0])
    return None


def enclosing_ifs(
    ctx: ModuleContext, node: ast.AST, stop: ast.AST | None = None
) -> Iterator[tuple[ast.If, str]]:
    """The `if` statements around `node` up to `stop` (all of them without one), innermost
    first, each with the part `node` is in: 'test', 'body' or 'orelse'. The one walk behind
    every "is this guarded by ...?" question the rules ask."""
    child: ast.AST = node
    for anc in ctx.ancestors(node):
        if anc is stop:
            return
        if isinstance(anc, ast.If):
            in_body = any(child is s for s in anc.body)
            yield anc, "test" if child is anc.test else "body" if in_body else "orelse"
        child = anc


def under_modulo_guard(ctx: ModuleContext, node: ast.AST, stop: ast.AST) -> bool:
    """Under an `if` whose test takes a modulo (`(i + 1) % accum_steps == 0`) inside `stop`
    (a loop): `node` runs every k-th iteration, as an accumulation's optimizer step does."""
    return any(mentions_modulo(guard.test) for guard, _ in enclosing_ifs(ctx, node, stop))


def is_periodic_guard(test: ast.expr) -> bool:
    """`step % 100 == 0`, `if log_every and ...`, `if args.verbose:` — runs every N steps;
    or on the iterations of a schedule (`if i in np.linspace(0, iterations, 10, dtype=int):`,
    `if epoch in milestones:`)."""
    if mentions_modulo(test):
        return True
    return any(
        _LOG_GUARD_NAME.search(n.attr if isinstance(n, ast.Attribute) else n.id)
        if isinstance(n, ast.Name | ast.Attribute)
        else _counter_in_schedule(n)
        for n in walk_tree(test)
        if isinstance(n, ast.Name | ast.Attribute | ast.Compare)
    )


_COUNTER_NAME = re.compile(
    r"(i|j|it|itr|iters?|iterations?|n_iter|batch_idx|(global_)?steps?|epochs?"
    r"|\w*_(step|steps|epoch|iter|iteration))"
)


def _counter_in_schedule(test: ast.Compare) -> bool:
    """`i in <iterations>`: a loop counter tested for membership in a set of iterations."""
    return (
        len(test.ops) == 1
        and isinstance(test.ops[0], ast.In)
        and isinstance(test.left, ast.Name)
        and _COUNTER_NAME.fullmatch(test.left.id) is not None
    )


def receiver_name(call: ast.Call) -> str:
    """`self.optimizer.step()` -> 'optimizer'; `opt.step()` -> 'opt'; otherwise ''."""
    func = call.func
    if not isinstance(func, ast.Attribute):
        return ""
    value = func.value
    if isinstance(value, ast.Attribute):
        return value.attr
    if isinstance(value, ast.Name):
        return value.id
    return ""


def method_name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ""


def is_backward_call(call: ast.Call) -> bool:
    """`loss.backward()`, `scaler.scale(loss).backward()`, `accelerator.backward(loss)`..."""
    return isinstance(call.func, ast.Attribute) and call.func.attr in _BACKWARD_METHODS


def phase_flags(ctx: ModuleContext, loop: ast.AST) -> frozenset[str]:
    """The flags (`is_train`, `train`, `self.training`) under which every backward of a loop
    that serves both phases runs (`if is_train: loss.backward()`), empty when a backward
    runs unguarded (or there is none): with the flag off the loop only evaluates."""
    flags: set[str] = set()
    body = loop.body if isinstance(loop, ast.For | ast.AsyncFor | ast.While) else loop
    for node in walk_scope(body):
        if not (isinstance(node, ast.Call) and is_backward_call(node)):
            continue
        guard = next(
            (
                test
                for anc, part in enclosing_ifs(ctx, node, loop)
                if part == "body" and isinstance(test := anc.test, ast.Name | ast.Attribute)
            ),
            None,
        )
        if guard is None:
            return frozenset()
        flags.add(ast.unparse(guard))
    return frozenset(flags)


def off_phase(ctx: ModuleContext, node: ast.AST, loop: ast.AST, flags: frozenset[str]) -> bool:
    """`node` runs only with a phase flag off: under `if not train ...:` (alone or and-ed
    with other conditions) or in the `else` of `if train:`, inside `loop`."""
    for guard, part in enclosing_ifs(ctx, node, loop):
        test = guard.test
        if part == "orelse" and ast.unparse(test) in flags:
            return True
        if part != "body":
            continue
        terms = (
            test.values if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And) else [test]
        )
        if any(
            isinstance(t, ast.UnaryOp)
            and isinstance(t.op, ast.Not)
            and ast.unparse(t.operand) in flags
            for t in terms
        ):
            return True
    return False


def is_scheduler_receiver(name: str) -> bool:
    return is_scheduler_name(name)


# Optimizer wrappers that step and then set the learning rate (the Transformer tutorials'
# `ScheduledOptim.step_and_update_lr()`, copied into many repositories): a step.
_WRAPPED_STEPS = frozenset({"step_and_update_lr", "step_and_update_learning_rate"})


def is_optimizer_step(call: ast.Call) -> bool:
    name = method_name(call)
    if name in _WRAPPED_STEPS and not call.args and not call.keywords:
        return isinstance(call.func, ast.Attribute) and receiver_name(call) not in ("self", "cls")
    if name != "step" or not isinstance(call.func, ast.Attribute):
        return False
    receiver = receiver_name(call)
    if receiver in ("self", "cls"):
        return False  # `self.step(batch)`: a method of the trainer, resolved as a local callee
    return not is_scheduler_receiver(receiver)


def is_zero_grad(node: ast.AST) -> bool:
    """`opt.zero_grad()`, `p.grad = None`, or a fresh `dist_autograd.context()` per step
    (`p.grad.zero_()` clears only in a loop over parameters: `parameter_loop_effects`)."""
    if isinstance(node, ast.Call):
        name = method_name(node)
        return name == "zero_grad" or (name == "context" and "autograd" in receiver_name(node))
    if isinstance(node, ast.Assign):  # p.grad = None
        return (
            any(isinstance(t, ast.Attribute) and t.attr == "grad" for t in node.targets)
            and isinstance(node.value, ast.Constant)
            and node.value.value is None
        )
    return False


_PARAMETER_CALLS = frozenset({"parameters", "named_parameters"})
_UPDATE_METHODS = frozenset({"sub_", "add_", "addcdiv_", "addcmul_", "copy_"})


def _strip_data(expr: ast.expr) -> ast.expr:
    """`p.data` -> `p` (the same storage, updated outside autograd)."""
    while isinstance(expr, ast.Attribute) and expr.attr == "data":
        expr = expr.value
    return expr


def _updated_tensor(expr: ast.expr) -> ast.expr:
    """The tensor an in-place chain writes: `p.data.mul_(1 - wd)` -> `p`."""
    expr = _strip_data(expr)
    while (
        isinstance(expr, ast.Call)
        and isinstance(expr.func, ast.Attribute)
        and expr.func.attr.endswith("_")
    ):
        expr = _strip_data(expr.func.value)
    return expr


def _parameter_variable(loop: ast.For) -> str:
    """`p` when `loop` runs over parameters: `model.parameters()`, `named_parameters()`
    (`for name, p in ...`), `list(...)`/`enumerate(...)` of them, a collection named like
    parameters (`params`, `group["params"]`) or a literal list of tensors (`[W, b]`); else ''."""
    iterable, target = loop.iter, loop.target
    while (
        isinstance(iterable, ast.Call)
        and isinstance(iterable.func, ast.Name)
        and iterable.func.id in ("list", "tuple", "enumerate")
        and len(iterable.args) == 1
    ):
        if iterable.func.id == "enumerate":
            if not (isinstance(target, ast.Tuple) and len(target.elts) == 2):
                return ""
            target = target.elts[1]
        iterable = iterable.args[0]
    if (
        isinstance(target, ast.Tuple)
        and len(target.elts) == 2
        and method_name_of(iterable) == "named_parameters"
    ):
        target = target.elts[1]
    if not isinstance(target, ast.Name):
        return ""
    if method_name_of(iterable) in _PARAMETER_CALLS:
        return target.id
    if isinstance(iterable, ast.List | ast.Tuple):
        tensors = [e for e in iterable.elts if isinstance(e, ast.Name | ast.Attribute)]
        return target.id if tensors and len(tensors) == len(iterable.elts) else ""
    if isinstance(iterable, ast.Name | ast.Attribute | ast.Subscript):
        return target.id if _named_like_parameters(iterable) else ""
    return ""


def spelled_words(expr: ast.AST) -> Iterator[str]:
    """The names, attributes and string keys an expression spells (`args.local_rank`,
    `os.environ["RANK"]`, `group["params"]`): what rules read its meaning from."""
    for node in walk_tree(expr):
        if isinstance(node, ast.Name):
            yield node.id
        elif isinstance(node, ast.Attribute):
            yield node.attr
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.value


def _named_like_parameters(expr: ast.expr) -> bool:
    """`params`, `self.parameters`, `group["params"]`: a name, attribute or key says so."""
    return any("param" in word.lower() for word in spelled_words(expr))


def method_name_of(expr: ast.expr) -> str:
    """`model.parameters()` -> 'parameters'; '' for anything but a call."""
    return method_name(expr) if isinstance(expr, ast.Call) else ""


def _reads_grad(expr: ast.AST, var: str, grads: set[str]) -> bool:
    """`expr` reads `var`'s own gradient: `p.grad`, `p.grad.data`, or a name bound to it."""
    for node in walk_tree(expr):
        if isinstance(node, ast.Attribute) and node.attr == "grad":
            base = _strip_data(node.value)
            if isinstance(base, ast.Name) and base.id == var:
                return True
        elif isinstance(node, ast.Name) and node.id in grads:
            return True
    return False


def _is_update(node: ast.AST, var: str, grads: set[str]) -> bool:
    """`node` writes parameter `var` in place from its own gradient: `p -= lr * p.grad`,
    `p.data = p.data - lr * p.grad.data`, `p.data.add_(p.grad, alpha=-lr)`, `p.sub_(...)`."""
    if isinstance(node, ast.AugAssign):
        target = _strip_data(node.target)
        return (
            isinstance(node.op, ast.Sub | ast.Add)
            and isinstance(target, ast.Name)
            and target.id == var
            and _reads_grad(node.value, var, grads)
        )
    if isinstance(node, ast.Assign):
        written = node.targets[0] if len(node.targets) == 1 else None
        return (
            isinstance(written, ast.Attribute)
            and written.attr == "data"
            and isinstance(base := _strip_data(written), ast.Name)
            and base.id == var
            and _reads_grad(node.value, var, grads)
        )
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        written = _updated_tensor(node.func.value)
        return (
            node.func.attr in _UPDATE_METHODS
            and isinstance(written, ast.Name)
            and written.id == var
            and any(
                _reads_grad(arg, var, grads)
                for arg in (*node.args, *(k.value for k in node.keywords))
            )
        )
    return False


def parameter_loop_effects(loop: ast.For) -> tuple[list[ast.AST], list[ast.AST]]:
    """(updates, clears) of a loop over parameters: the statements and calls that update each
    parameter from its own gradient (the step of a trainer with no optimizer), and the
    `p.grad.zero_()` calls that clear it (an adversarial input's `delta.grad.zero_()` clears
    no parameter). A loop that only reads gradients (`total += p.grad.norm()`), rescales
    them (`p.grad.div_(n)`) or moves another tensor (an EMA copy's `ema_p.mul_(d).add_(p,
    alpha=1 - d)`) updates nothing."""
    var = _parameter_variable(loop)
    if not var:
        return [], []
    grads: set[str] = set()  # names bound to the gradient: `d_p = p.grad.data`
    updates: list[ast.AST] = []
    clears: list[ast.AST] = []
    for node in walk_scope(loop.body):
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(name := node.targets[0], ast.Name)
            and _reads_grad(node.value, var, grads)
        ):
            grads.add(name.id)
        elif _is_update(node, var, grads):
            updates.append(node)
        elif _clears_grad_of(node, var):
            clears.append(node)
    return updates, clears


def _clears_grad_of(node: ast.AST, var: str) -> bool:
    """`p.grad.zero_()` or `p.grad.data.zero_()`."""
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "zero_"
    ):
        return False
    grad = _strip_data(node.func.value)
    return (
        isinstance(grad, ast.Attribute)
        and grad.attr == "grad"
        and isinstance(owner := _strip_data(grad.value), ast.Name)
        and owner.id == var
    )


@dataclass
class Effects:
    backward: list[ast.Call] = field(default_factory=list)
    step: list[ast.Call] = field(default_factory=list)
    zero_grad: list[ast.AST] = field(default_factory=list)
    update: list[ast.AST] = field(default_factory=list)
    """Manual parameter updates (`manual_updates`): a step taken without an optimizer."""
    callees: set[str] = field(default_factory=set)

    def merge(self, other: Effects) -> bool:
        """Add other's calls; True if anything new arrived (for the fixpoint)."""
        before = self._sizes()
        for attr in _EFFECT_LISTS:
            mine: list[ast.AST] = getattr(self, attr)
            for call in getattr(other, attr):
                if call not in mine:
                    mine.append(call)
        return before != self._sizes()

    def _sizes(self) -> tuple[int, ...]:
        return tuple(len(getattr(self, attr)) for attr in _EFFECT_LISTS)

    @property
    def trains(self) -> bool:
        """Backpropagates and steps: an optimizer's `step()` or a manual update."""
        return bool(self.backward) and (bool(self.step) or bool(self.update))


_EFFECT_LISTS = ("backward", "step", "zero_grad", "update")


def closure_names(step: ast.Call) -> set[str]:
    """`optimizer.step(closure)` (LBFGS): names passed to step() that it will call."""
    passed = [*step.args, *(k.value for k in step.keywords if k.arg == "closure")]
    return {arg.id for arg in passed if isinstance(arg, ast.Name)}


def direct_effects(body: list[ast.stmt] | ast.AST) -> Effects:
    effects = Effects()
    for node in walk_scope(body):
        if is_zero_grad(node):
            effects.zero_grad.append(node)
        if isinstance(node, ast.For):
            updates, clears = parameter_loop_effects(node)
            effects.update += updates
            effects.zero_grad += clears
        if not isinstance(node, ast.Call):
            continue
        if is_backward_call(node):
            effects.backward.append(node)
        elif is_optimizer_step(node):
            effects.step.append(node)
            effects.callees |= closure_names(node)
        elif not is_zero_grad(node) and (callee := local_callee(node)):
            effects.callees.add(callee)
    return effects


_FRAMEWORK_METHODS = frozenset(
    {
        "step",
        "backward",
        "zero_grad",
        "forward",
        "item",
        "to",
        "cuda",
        "cpu",
        "train",
        "eval",
        "update",
        "append",
        "extend",
        "add_",
        "mul_",
        "detach",
        "numpy",
        "tolist",
        "sum",
        "mean",
    }
)


def local_callee(call: ast.Call) -> str:
    """The name a call may resolve to among the module's own functions and methods.

    `f(x)` and `self.f(x)` always; `obj.f(x)` unless `f` is a common framework method name
    (so `opt.step()` never links to a local function that happens to be called `step`).
    """
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        if isinstance(func.value, ast.Name) and func.value.id in ("self", "cls"):
            return func.attr
        if func.attr not in _FRAMEWORK_METHODS:
            return func.attr
    return ""


@dataclass
class TrainingLoop:
    node: ast.For | ast.While | FunctionNode
    kind: str  # "loop" | "lightning"
    effects: Effects

    @property
    def body(self) -> list[ast.stmt]:
        return self.node.body


class LoopAnalysis:
    """Training loops and per-function effects of one module, computed once on demand."""

    def __init__(self, ctx: ModuleContext) -> None:
        self.ctx = ctx
        self._body_effects: dict[tuple[int, ...], tuple[bool, bool, object]] = {}

    @cached_property
    def functions(self) -> dict[str, list[FunctionNode]]:
        found: dict[str, list[FunctionNode]] = {}
        for node in nodes_of(self.ctx, ast.FunctionDef, ast.AsyncFunctionDef):
            assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            found.setdefault(node.name, []).append(node)
        return found

    @cached_property
    def _direct_by_owner(self) -> dict[int, Effects]:
        """id(loop or function) -> the effects in its body, same scope; one pass over calls.

        Equivalent to `direct_effects(owner.body)` for every loop and function at once: each
        relevant call is credited to the loops and the function that enclose it, instead of
        re-walking every (nested) body.
        """
        owners: dict[int, Effects] = {}
        relevant = [
            (node, kind)
            for node in (*nodes_of(self.ctx, ast.Call), *nodes_of(self.ctx, ast.Assign))
            if (kind := self._classify(node))
        ]
        for updates, clears in self._parameter_loops.values():
            relevant += [(node, "update") for node in updates]
            relevant += [(node, "zero_grad") for node in clears]
        # source order, as `nodes_of(ctx, Call, Assign)` gives, sorting only the few that count
        relevant.sort(key=lambda pair: position(pair[0]))
        for node, kind in relevant:
            child: ast.AST = node
            for anc in self.ctx.ancestors(node):
                if isinstance(anc, ast.Lambda | ast.ClassDef):
                    break
                if isinstance(anc, _OWNER_NODES) and _in_body(child, anc):
                    effects = owners.setdefault(id(anc), Effects())
                    if kind == "callee":
                        assert isinstance(node, ast.Call)
                        effects.callees.add(local_callee(node))
                    else:
                        getattr(effects, kind).append(node)
                        if kind == "step" and isinstance(node, ast.Call):  # step(closure) runs it
                            effects.callees |= closure_names(node)
                if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef):
                    break
                child = anc
        return owners

    def _classify(self, node: ast.AST) -> str:
        """What a call or assignment contributes to its owners' effects. A callee counts only
        when it names one of the module's functions: effects are merged through those alone."""
        if is_zero_grad(node):
            return "zero_grad"
        if not isinstance(node, ast.Call):
            return ""
        if is_backward_call(node):
            return "backward"
        if is_optimizer_step(node):
            return "step"
        return "callee" if local_callee(node) in self.functions else ""

    def _direct(self, owner: ast.AST) -> Effects:
        """A fresh copy of `owner`'s direct effects (safe to merge into)."""
        found = self._direct_by_owner.get(id(owner))
        copy = Effects()
        if found is not None:
            copy.merge(found)
            copy.callees |= found.callees
        return copy

    @cached_property
    def function_effects(self) -> dict[str, Effects]:
        """Transitive effects of each local function name (fixpoint over local calls)."""
        summaries: dict[str, Effects] = {}
        for name, defs in self.functions.items():
            total = Effects()
            for fn in defs:
                eff = self._direct(fn)
                total.merge(eff)
                total.callees |= eff.callees
            summaries[name] = total
        changed = True
        while changed:
            changed = False
            for summary in summaries.values():
                for callee in list(summary.callees):
                    if callee in summaries and summaries[callee] is not summary:
                        changed |= summary.merge(summaries[callee])
        return summaries

    def _loop_effects(self, loop: ast.For | ast.While) -> Effects:
        effects = self._direct(loop)
        for callee in list(effects.callees):
            if callee in self.function_effects:
                effects.merge(self.function_effects[callee])
        return effects

    @cached_property
    def _module_backpropagates(self) -> bool:
        """Whether the module calls backward anywhere: without one, no body does."""
        return any(is_backward_call(c) for c in self.ctx.flow.calls_named(_BACKWARD_METHODS))

    def backpropagates(self, body: list[ast.stmt] | ast.AST) -> bool:
        """Whether `body` calls backward, itself or through the module's functions."""
        return self._module_backpropagates and self._summary(body)[0]

    @cached_property
    def _parameter_loops(self) -> dict[ast.For, tuple[list[ast.AST], list[ast.AST]]]:
        """The module's loops over parameters that update or clear them by hand, with their
        (updates, clears)."""
        if ".grad" not in self.ctx.source:
            return {}
        found = {
            loop: parameter_loop_effects(loop)
            for loop in nodes_of(self.ctx, ast.For)
            if isinstance(loop, ast.For)
        }
        return {loop: effects for loop, effects in found.items() if any(effects)}

    @cached_property
    def _module_steps(self) -> bool:
        """Whether the module steps anywhere (an optimizer's `step()` or a manual update):
        without one, no body trains (many modules back-propagate with no step here: autograd
        functions, a trainer's helpers)."""
        steps = self.ctx.flow.calls_named(("step", *_WRAPPED_STEPS))
        return any(is_optimizer_step(c) for c in steps) or any(
            updates for updates, _ in self._parameter_loops.values()
        )

    def trains(self, body: list[ast.stmt] | ast.AST) -> bool:
        """Whether `body` calls backward and an optimizer step (through local calls too)."""
        return self._module_backpropagates and self._module_steps and self._summary(body)[1]

    def _summary(self, body: list[ast.stmt] | ast.AST) -> tuple[bool, bool]:
        """(backpropagates, trains) of `body`, once per statement sequence: rules ask it of
        every caller of every helper, and one long function calling many helpers was walked
        once per call (torch's common_nn.py: most of a minute). Keyed by the statements, not
        the list, which may be a temporary one (kept alive with the answer, so no id is
        reused while the memo lives)."""
        key = tuple(map(id, body)) if isinstance(body, list) else (id(body),)
        found = self._body_effects.get(key)
        if found is None:
            effects = self.effects_of(body)
            found = self._body_effects[key] = (bool(effects.backward), effects.trains, body)
        return found[0], found[1]

    def effects_of(self, body: list[ast.stmt] | ast.AST) -> Effects:
        effects = direct_effects(body)
        for callee in list(effects.callees):
            if callee in self.function_effects:
                effects.merge(self.function_effects[callee])
        return effects

    @cached_property
    def training_loops(self) -> list[TrainingLoop]:
        """Empty unless the source holds one of `TRAINING_TEXT` (rules gate on it)."""
        source = self.ctx.source
        loops: list[TrainingLoop] = []
        trains = (
            "backward" in source
            and any(text in source for text in STEP_TEXT)
            and self._has_step_and_backward()
        )
        candidates = [
            node
            for node in (nodes_of(self.ctx, ast.For, ast.While) if trains else [])
            if isinstance(node, ast.For | ast.While)
        ]
        training = {id(node): self._loop_effects(node) for node in candidates}
        looping = self._functions_running_loops([n for n in candidates if training[id(n)].trains])
        for node in candidates:
            eff = training[id(node)]
            if not eff.trains:
                continue
            inner = [
                child
                for child in walk_scope(node.body)
                if child is not node
                and isinstance(child, ast.For | ast.While)
                and training.get(id(child), Effects()).trains
            ]
            own = self.ctx.enclosing_function(node)
            calls_a_loop = self._direct(node).callees & (looping - {own.name if own else ""})
            if not calls_a_loop and (not inner or self._also_trains_itself(node, inner)):
                loops.append(TrainingLoop(node, "loop", eff))
        for fn in self.functions.get("training_step", []) if "training_step" in source else []:
            loops.append(TrainingLoop(fn, "lightning", self.effects_of(fn.body)))
        return loops

    def _also_trains_itself(self, loop: ast.For | ast.While, inner: Sequence[ast.AST]) -> bool:
        """A loop around a training loop that also backpropagates and steps outside it: a
        second update of its own each iteration (WGAN's generator step after its critic's
        inner loop), not only the epochs around the batches."""
        own = self._direct(loop)
        nested = {id(node) for node in inner}

        def outside(call: ast.AST) -> bool:
            return not any(id(anc) in nested for anc in self.ctx.ancestors(call))

        return any(outside(c) for c in own.backward) and any(
            outside(c) for c in [*own.step, *own.update]
        )

    def _has_step_and_backward(self) -> bool:
        """A loop trains only if the module calls both somewhere: one look at the calls by
        name, instead of every loop's effects (most loops of library code train nothing)."""
        return self._module_backpropagates and self._module_steps

    def _functions_running_loops(self, training: list[ast.For | ast.While]) -> set[str]:
        """Local functions that run a whole training loop, themselves or through calls.

        An epoch loop that calls `train_one_epoch()` is not itself the training loop: the loop
        inside that function is, and what the epoch loop does runs once per epoch.
        """
        looping = {
            fn.name for node in training if (fn := self.ctx.enclosing_function(node)) is not None
        }
        if not looping:
            return looping
        calls = {
            name: set().union(*(self._direct(fn).callees for fn in defs))
            for name, defs in self.functions.items()
        }
        changed = True
        while changed:
            grown = {name for name, callees in calls.items() if callees & looping} - looping
            looping |= grown
            changed = bool(grown)
        return looping

    def loop_containing(self, node: ast.AST) -> TrainingLoop | None:
        """The training loop whose body holds `node` directly (same function scope)."""
        ancestors = set(map(id, self.ctx.ancestors(node)))
        for loop in self.training_loops:
            if id(loop.node) in ancestors:
                return loop
        return None

    @cached_property
    def step_functions(self) -> set[str]:
        """Local functions called from a training loop's body: their bodies run every step."""
        names: set[str] = set()
        for loop in self.training_loops:
            names |= self._every_step_callees(loop)
        frontier = set(names)
        while frontier:
            nxt: set[str] = set()
            for name in frontier:
                for fn in self.functions[name]:
                    nxt |= direct_effects(fn.body).callees & set(self.functions)
            frontier = nxt - names
            names |= frontier
        return names

    def _every_step_callees(self, loop: TrainingLoop) -> set[str]:
        """Local functions the loop body calls outside `if step % N == 0:`-style guards."""
        found: set[str] = set()
        for node in walk_scope(loop.body):
            if not isinstance(node, ast.Call) or local_callee(node) not in self.functions:
                continue
            guarded = False
            for anc in self.ctx.ancestors(node):
                if anc is loop.node:
                    break
                if isinstance(anc, ast.If) and self._periodic_test(anc.test):
                    guarded = True
                    break
            if not guarded:
                found.add(local_callee(node))
        return found

    def _periodic_test(self, test: ast.expr, depth: int = 0) -> bool:
        """`is_periodic_guard(test)`, or of what a name in it was bound to, up to two bindings
        away: `step_eval = step % eval_interval == 0`, then `if epoch_eval or step_eval:`
        (Real-Time-Voice-Cloning's synthesizer samples only at those steps)."""
        if is_periodic_guard(test):
            return True
        return depth < 2 and any(
            self._periodic_test(value, depth + 1)
            for name in walk_tree(test)
            if isinstance(name, ast.Name)
            for value in self.ctx.flow.definitions(name)
        )

    def one_step_per_epoch(self, loop: TrainingLoop) -> bool:
        """The loop counts epochs (`for epoch in range(args.epochs):`, no inner training loop
        by construction) and neither its body nor the functions it calls every step draw a
        batch (no `next(...)`, sampler, random index or `*batch*` call): full-batch training
        (a GCN on Cora, ogbn-arxiv), where one optimizer step consumes the whole dataset."""
        node = loop.node
        if not (
            isinstance(node, ast.For)
            and isinstance(node.target, ast.Name)
            and "epoch" in node.target.id.lower()
            and isinstance(node.iter, ast.Call)
            and isinstance(node.iter.func, ast.Name)
            and node.iter.func.id in ("range", "trange")
        ):
            return False
        callees = self._every_step_callees(loop)
        frontier = set(callees)
        while frontier:  # what the step's callees call, as step_functions follows them
            reached = {
                callee
                for name in frontier
                for fn in self.functions[name]
                for callee in direct_effects(fn.body).callees & set(self.functions)
            }
            frontier = reached - callees
            callees |= frontier
        bodies: list[list[ast.stmt]] = [node.body]
        bodies += [fn.body for name in callees for fn in self.functions[name]]
        return not any(
            isinstance(call, ast.Call) and _draws_a_batch(call)
            for body in bodies
            for call in walk_scope(body)
        )

    def per_epoch_only(self, node: ast.AST) -> bool:
        """`node` runs once per step of full-batch training: in such a loop's body, or in a
        function every training loop of the module calls and all of them are full-batch."""
        loop = self.loop_containing(node)
        if loop is not None:
            return self.one_step_per_epoch(loop)
        loops = self.training_loops
        return bool(loops) and all(
            lp.kind == "loop" and self.one_step_per_epoch(lp) for lp in loops
        )

    def in_training_step(self, node: ast.AST) -> bool:
        """True when `node` runs once per training step (loop body or a function it calls)."""
        if self.loop_containing(node) is not None:
            return True
        fn = self.ctx.enclosing_function(node)
        return fn is not None and (fn.name in self.step_functions or fn.name == "training_step")


_BATCH_DRAWS = frozenset({"next", "sample", "randint", "randperm", "choice", "permutation"})


def _draws_a_batch(call: ast.Call) -> bool:
    """`next(it)`, `buffer.sample(n)`, `torch.randint(...)`, `get_batch('train')`: a call that
    picks this step's examples."""
    func = call.func
    name = (
        func.id
        if isinstance(func, ast.Name)
        else func.attr
        if isinstance(func, ast.Attribute)
        else ""
    )
    return name in _BATCH_DRAWS or "batch" in name.lower()
