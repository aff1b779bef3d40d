"""rnn-hidden-not-detached: a recurrent state carried from batch to batch with its graph."""

from __future__ import annotations

import ast
import builtins
import re
import sys
from typing import ClassVar

from torchdoctor.agent.checks.analysis.defuse import identifier
from torchdoctor.agent.checks.analysis.project import star_modules
from torchdoctor.agent.checks.analysis.vocabulary import NON_GRAD_TORCH
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import enclosing_ifs, walk_scope, walk_tree
from torchdoctor.agent.checks.patterns import is_model_expr, model_calls, terminal_name
from torchdoctor.agent.models import Severity

_ARRAY_LIBRARIES = frozenset({"numpy", "pandas", "scipy", "sklearn"})


class RnnHiddenNotDetached(Rule):
    """Detects, in a training loop (one that calls `backward()` and an optimizer step), a
    model call that takes a state and returns its next value into the same names
    (`output, hidden = model(data, hidden)`, `out, (h, c) = lstm(x, (h, c))`), where the
    state is created before the loop and nothing in the loop detaches or re-creates it. Also
    a step function (one call per batch: it back-propagates and steps) that keeps the state
    between its calls, in a `global` name or an attribute (`out, self.hidden =
    self.rnn(x, self.hidden)`) that no other method but `__init__` re-binds.

    A state re-created only on one path (A3C's `if done: cx = torch.zeros(1, 256)` with no
    `else: cx = cx.detach()`), the initial one bound in the loop before the call, is carried
    with its graph between resets; nested tuples count (`model((x, (hx, cx)))`).

    Why it matters: the returned state is attached to this batch's graph. Fed to the next
    batch, backward() walks into the previous batch's freed graph and fails ("Trying to
    backward through the graph a second time"); with `retain_graph=True` as the usual
    workaround it back-propagates through every batch seen so far, so each step gets slower
    and memory grows until the run dies.

    Not reported: any other assignment to the state inside the loop (`hidden =
    repackage_hidden(hidden)`, `hidden = hidden.detach()`, a periodic detach for truncated
    BPTT, `hidden = model.init_hidden(bs)`), `.detach_()` on it, a state passed through a
    call (`model(x, repackage(hidden))`), a state a local helper always returns detached
    (`return penalty, path_mean.detach(), lengths`), a name the module calls (a target
    network a soft-update helper re-binds), a value a helper of another file re-binds from
    it and plain numbers when no model runs there and its name is no state's
    (`optimizer = utils.optimizer_scheduler(optimizer, p)`), loops without backward
    (generation, rollouts);
    a step function that re-creates the state in its own body before the call.

    Example:
        hidden = model.init_hidden(batch_size)
        for data, targets in batches:
            output, hidden = model(data, hidden)
            loss = criterion(output, targets)
            loss.backward()
            optimizer.step()

    Fix: detach the state at the start of every batch (`hidden = hidden.detach()`, or
    `tuple(h.detach() for h in hidden)` for an LSTM), as PyTorch's word_language_model does
    with `repackage_hidden`.
    """

    id = "rnn-hidden-not-detached"
    point = 1
    severity = Severity.HIGH
    title = "Recurrent state carried across batches with its graph"
    items: ClassVar[tuple[str, ...]] = ("1.4",)

    def applies(self, ctx: ModuleContext) -> bool:
        return "hidden" in ctx.source or "state" in ctx.source or ", (h" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        self._check_step_functions(ctx)
        for loop in ctx.loops.training_loops:
            if loop.kind != "loop":
                continue
            body = list(walk_scope(loop.node.body))
            for node in body:
                if not isinstance(node, ast.Assign) or not isinstance(node.value, ast.Call):
                    continue
                carried = (_names(node.targets) & _passed_names(node.value)) - _module_definitions(
                    ctx
                )
                carried -= _called(ctx)
                if not carried or not _defined_before(ctx, loop.node, node, carried):
                    continue
                if _holds_no_graph(ctx, node.value) or not _may_carry_a_state(ctx, node, carried):
                    continue
                if any(
                    _resets(other, node, carried)
                    and not _recreated_on_one_path(ctx, other, node, carried)
                    for other in body
                ):
                    continue
                carried -= _returned_detached(ctx, node)
                if not carried:
                    continue
                state = ", ".join(sorted(carried))
                ctx.report(
                    self,
                    node,
                    f"`{state}` comes back from the model and is fed to the next batch with its "
                    "graph: backward() reaches into previous batches",
                    data={"state": sorted(carried)},
                )

    def _check_step_functions(self, ctx: ModuleContext) -> None:
        for defs in ctx.loops.functions.values():
            for fn in defs:
                if not isinstance(fn, ast.FunctionDef) or not ctx.loops.trains(fn.body):
                    continue
                body = list(walk_scope(fn.body))
                kept = {n for node in body if isinstance(node, ast.Global) for n in node.names}
                kept |= _attributes_kept(ctx, fn)
                for node in body:
                    if not isinstance(node, ast.Assign) or not isinstance(node.value, ast.Call):
                        continue
                    carried = _state_keys(node.targets) & _passed_keys(node.value) & kept
                    carried -= _module_definitions(ctx) | _modules_rebound(ctx, node)
                    carried -= _called(ctx)
                    if not carried or any(_rebinds(other, node, carried) for other in body):
                        continue
                    if _holds_no_graph(ctx, node.value):
                        continue
                    state = ", ".join(sorted(carried))
                    ctx.report(
                        self,
                        node,
                        f"`{state}` is kept from one call of `{fn.name}` to the next with its "
                        "graph: backward() reaches into previous batches",
                        data={"state": sorted(carried)},
                    )


def _modules_rebound(ctx: ModuleContext, site: ast.Assign) -> frozenset[str]:
    """Targets of `site` that hold a model (`self.module = accelerator.prepare(self.module)`,
    `self.model = torch.compile(self.model)`): a wrapped module carries no graph."""
    targets = [
        t
        for target in site.targets
        for t in (target.elts if isinstance(target, ast.Tuple | ast.List) else [target])
    ]
    return frozenset(
        ast.unparse(t)
        for t in targets
        if isinstance(t, ast.Name | ast.Attribute) and ctx.flow.is_module_value(t)
    )


def _called(ctx: ModuleContext) -> frozenset[str]:
    """Names and `self.x` attributes the module calls (`self.target_q_net1(next_state, ...)`):
    a network or a function, never a recurrent state. A TD3 update re-binds its target
    networks through a soft-update helper (`self.target_q_net1 = self.target_soft_update(
    self.q_net1, self.target_q_net1, tau)`), whose class comes from another file."""
    memo = ctx.memo_table("rnn_hidden_not_detached.called")
    found = memo.get(id(ctx.tree))
    if found is None:
        found = memo[id(ctx.tree)] = frozenset(
            ast.unparse(node.func)
            for node in walk_tree(ctx.tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute)
        )
    return found


def _module_definitions(ctx: ModuleContext) -> frozenset[str]:
    """Names of the module's functions and classes: `val_loop = tracker.track("val",
    n)(val_loop)` under `global val_loop` wraps a function in a decorator (descript-audio-
    codec's `train`), it carries no tensor from one step to the next."""
    return frozenset(
        stmt.name
        for stmt in ctx.tree.body
        if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    )


_STATE_NAME = re.compile(
    r"(^|_)(hidden|hid|state|states|h|c|hx|cx|h0|c0|hn|cn|ht|ct|mem|mems|memory|memories|carry)"
    r"(_|$|\d)",
    re.IGNORECASE,
)
"""Names of a recurrent state (`hidden`, `h_t`, `prev_state`, `mems`, `cx`)."""


def _may_carry_a_state(ctx: ModuleContext, site: ast.Assign, carried: set[str]) -> bool:
    """Whether `site` can hand a graph back: a model runs in it, its callee is a function of
    this module (its body may build one: StyleGAN2's `path_regularize`), or the value is named
    as a recurrent state. A helper of another file fed the carried value and plain numbers
    (`optimizer = utils.optimizer_scheduler(optimizer, p)` in DANN, pointer_summarizer's
    `running_avg_loss = calc_running_avg_loss(loss, running_avg_loss, ...)` of a `.item()`)
    re-binds no state; a method of a model (`dreamer.sample_action`) may."""
    if any(_STATE_NAME.search(name.rpartition(".")[2]) for name in carried):
        return True
    func = site.value.func if isinstance(site.value, ast.Call) else None
    local = isinstance(func, ast.Name) or (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and func.value.id == "self"
    )
    if local and terminal_name(func) in ctx.flow.functions:  # type: ignore[arg-type]
        return True
    if isinstance(func, ast.Attribute) and is_model_expr(ctx, func.value):
        return True  # a model's own method (`dreamer.sample_action(obs, prev_data)`)
    return next(model_calls(ctx, [site]), None) is not None


def _holds_no_graph(ctx: ModuleContext, call: ast.Call) -> bool:
    """A call of a library function that returns no autograd graph: the standard library's
    or an array library's (`pickle.load`, `np.clip`), or torch's loaders, factories and
    comparisons (`checkpoint = torch.load(checkpoint)` in a training `main`, `torch` imported
    or brought by a star import of the project's utilities); a builtin (`best_acc =
    max(test_acc, best_acc)` in a `train` that keeps the best score in a global)."""
    if _builtin_call(ctx, call):
        return True
    qual = ctx.flow.qualname_of(call)
    if qual is None and star_modules(ctx) and "torch" not in ctx.imports.aliases:
        text = ast.unparse(call.func)
        qual = text if text.startswith("torch.") else None
    if qual is None:
        return False  # a model, a layer or a local function: it may return its graph
    package, _, name = qual.partition(".")
    if package == "torch":
        return name in NON_GRAD_TORCH
    return package in sys.stdlib_module_names or package in _ARRAY_LIBRARIES


def _builtin_call(ctx: ModuleContext, call: ast.Call) -> bool:
    """`max(...)`, `round(...)`: a builtin the module does not shadow; no model returns its
    next state through one."""
    func = call.func
    return (
        isinstance(func, ast.Name)
        and hasattr(builtins, func.id)
        and func.id not in ctx.flow.functions
        and func.id not in ctx.flow.classes
        and func.id not in ctx.imports.aliases
    )


def _state_keys(targets: list[ast.expr]) -> set[str]:
    """Names and `self.x` attributes a binding stores."""
    found: set[str] = set()
    for target in targets:
        for node in walk_tree(target):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                found.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                found.add(f"{node.value.id}.{node.attr}")
    return found


def _passed_keys(call: ast.Call) -> set[str]:
    found = _passed_names(call)
    for arg in [*call.args, *(k.value for k in call.keywords)]:
        parts = arg.elts if isinstance(arg, ast.Tuple | ast.List) else [arg]
        found |= {
            f"{p.value.id}.{p.attr}"
            for p in parts
            if isinstance(p, ast.Attribute) and isinstance(p.value, ast.Name)
        }
    return found


def _attributes_kept(ctx: ModuleContext, fn: ast.FunctionDef) -> set[str]:
    """`self.x` attributes of a method that no other method of its class but `__init__`
    binds (a `reset_state()` / `detach_hidden()` method would re-create or detach them)."""
    cls = ctx.parents.get(fn)
    if not isinstance(cls, ast.ClassDef) or not fn.args.args or fn.args.args[0].arg != "self":
        return set()
    elsewhere: set[str] = set()
    for other in cls.body:
        if isinstance(other, ast.FunctionDef) and other is not fn and other.name != "__init__":
            elsewhere |= _attributes_reset(ctx, other)
    stored = {
        ast.unparse(node)
        for node in walk_tree(fn)
        if isinstance(node, ast.Attribute)
        and isinstance(node.ctx, ast.Store)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    }
    return stored - elsewhere


def _attributes_reset(ctx: ModuleContext, method: ast.FunctionDef) -> frozenset[str]:
    """The attributes `method` binds or detaches/zeroes in place; walked once per module,
    not once per other method of its class (a test class of hundreds of methods)."""
    memo = ctx.memo_table("rnn_hidden_not_detached.attributes_reset")
    found = memo.get(id(method))
    if found is None:
        names: set[str] = set()
        for node in walk_tree(method):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(ast.unparse(node))
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("detach_", "zero_")
            ):
                names.add(ast.unparse(node.func.value).split("[")[0])
        found = memo[id(method)] = frozenset(names)
    return found


def _rebinds(node: ast.AST, site: ast.Assign, keys: set[str]) -> bool:
    """Another binding of a kept name or attribute in the step, or `.detach_()` on it."""
    if node is site:
        return False
    if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
        targets: list[ast.expr] = (
            list(node.targets) if isinstance(node, ast.Assign) else [node.target]
        )
        return bool(_state_keys(targets) & keys)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr in ("detach_", "zero_") and bool(
            {ast.unparse(node.func.value).split("[")[0]} & keys
        )
    return False


def _returned_detached(ctx: ModuleContext, assign: ast.Assign) -> set[str]:
    """The names a local function's every `return` hands back cut from the graph
    (`return penalty, path_mean.detach(), lengths` bound to `loss, mean_path, lengths`): a
    running statistic, not a state that carries the graph."""
    call = assign.value
    if not isinstance(call, ast.Call) or len(assign.targets) != 1:
        return set()
    defs = ctx.flow.functions.get(identifier(call.func), [])
    returns = [
        n.value for fn in defs for n in walk_scope(fn.body) if isinstance(n, ast.Return) and n.value
    ]
    if len(defs) != 1 or not returns:
        return set()
    target = assign.targets[0]
    slots = target.elts if isinstance(target, ast.Tuple | ast.List) else [target]
    cut: set[str] = set()
    for position, slot in enumerate(slots):
        if not isinstance(slot, ast.Name):
            continue
        values = [
            (r.elts[position] if len(r.elts) == len(slots) else None)
            if isinstance(r, ast.Tuple)
            else (r if len(slots) == 1 else None)
            for r in returns
        ]
        if all(v is not None and _detached(v) for v in values):
            cut.add(slot.id)
    return cut


def _detached(value: ast.expr) -> bool:
    return (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Attribute)
        and value.func.attr in ("detach", "item")
    )


def _names(targets: list[ast.expr]) -> set[str]:
    found: set[str] = set()
    for target in targets:
        for node in walk_tree(target):
            if isinstance(node, ast.Name):
                found.add(node.id)
    return found


def _passed_names(call: ast.Call) -> set[str]:
    """Names passed as they are (alone or in tuples, nested ones included: A3C's
    `model((state, (hx, cx)))`), not through another call."""
    found: set[str] = set()
    parts: list[ast.expr] = [*call.args, *(k.value for k in call.keywords)]
    while parts:
        part = parts.pop()
        if isinstance(part, ast.Tuple | ast.List):
            parts.extend(part.elts)
        elif isinstance(part, ast.Name):
            found.add(part.id)
    return found


def _recreated_on_one_path(
    ctx: ModuleContext, node: ast.AST, site: ast.AST, names: set[str]
) -> bool:
    """A fresh state bound under an `if` that the carrying call is not in, whose other path
    leaves the carried one as it is (A3C's `if done: cx = torch.zeros(1, 256)` with no
    `else: cx = cx.detach()`): between two such resets the state keeps its graph from batch
    to batch. A binding in the call's own branch (`reps = []` then `reps = torch.cat(reps)`
    under one `elif`) runs before it on every path; a detach under an `if` (truncated BPTT
    every k steps) reads the state, and is a choice."""
    if not isinstance(node, ast.Assign):
        return False
    if any(isinstance(n, ast.Name) and n.id in names for n in walk_tree(node.value)):
        return False  # derived from the state: a detach or a repackaging
    around_site = {(id(branch), part) for branch, part in enclosing_ifs(ctx, site)}
    for branch, part in enclosing_ifs(ctx, node):
        if part == "test":
            return False
        if (id(branch), part) in around_site:
            return False  # the call sits in the same branch: the binding comes first
        other = branch.orelse if part == "body" else branch.body
        bound = _names(
            [
                t
                for stmt in other
                for n in walk_tree(stmt)
                if isinstance(n, ast.Assign)
                for t in n.targets
            ]
        )
        return not names <= bound
    return False


def _defined_before(ctx: ModuleContext, loop: ast.AST, site: ast.AST, names: set[str]) -> bool:
    """Every carried name is bound before the loop starts (an initial state exists), or
    earlier in the loop's body than the call that carries it (A3C re-creates its state at
    the top of each rollout when an episode ends)."""
    line = getattr(loop, "lineno", 0)
    if _bound_in(ctx, loop, site, names):
        return True
    fn = ctx.enclosing_function(loop)
    params = {a.arg for a in fn.args.args} if fn is not None else set()
    scope: ast.AST = fn if fn is not None else ctx.tree
    bound: set[str] = set()
    for node in walk_scope(getattr(scope, "body", [])):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and node.lineno < line:
            bound.add(node.id)
    return names <= (bound | params)


def _bound_in(ctx: ModuleContext, loop: ast.AST, site: ast.AST, names: set[str]) -> bool:
    before = getattr(site, "lineno", 0)
    bound = {
        node.id
        for node in walk_scope(getattr(loop, "body", []))
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and node.lineno < before
    }
    return names <= bound


def _resets(node: ast.AST, site: ast.Assign, names: set[str]) -> bool:
    """Another binding of a carried name in the loop, or `.detach_()` on it."""
    if node is site:
        return False
    if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
        targets: list[ast.expr] = (
            list(node.targets) if isinstance(node, ast.Assign) else [node.target]
        )
        return bool(_names(targets) & names)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        receiver = node.func.value
        while isinstance(receiver, ast.Subscript | ast.Attribute):
            receiver = receiver.value  # `hidden[0].detach_()`
        return (
            node.func.attr in ("detach_", "zero_")
            and isinstance(receiver, ast.Name)
            and receiver.id in names
        )
    return isinstance(node, ast.For | ast.comprehension) and bool(_names([node.target]) & names)
