"""train-mode-not-restored: the epoch loop switches to eval() and never back to train()."""

from __future__ import annotations

import ast
import re
from typing import Any, ClassVar

from torchdoctor.agent.checks.analysis.mode_layers import mode_independent
from torchdoctor.agent.checks.analysis.model_facts import LOSS_NAME
from torchdoctor.agent.checks.analysis.project import (
    Pending,
    ProjectIndex,
    defer,
    is_package_init,
    project_symbol,
    publish,
)
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.checks.loops import (
    enclosing_ifs,
    local_callee,
    off_phase,
    phase_flags,
    walk_tree,
)
from torchdoctor.agent.checks.patterns import switches_to_eval
from torchdoctor.agent.models import Severity

_LOOPS = (ast.For, ast.While, ast.AsyncFor)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


class TrainModeNotRestored(Rule):
    """Detects a loop that trains (reaches `backward()` and an optimizer `step()`) and also
    switches the model to evaluation mode (`.eval()` / `.train(False)`, directly or in a
    validation function it calls), but never calls `.train()` again inside the loop.

    Why it matters: after the first validation the model stays in eval mode, so every later
    epoch trains with dropout off and BatchNorm frozen on its running statistics. Training
    still "works", but regularisation is gone and results differ from what the code says.

    Also reported when the validation function is imported from another file and, there,
    puts the model it is given in eval mode without setting it back.

    Also reported: an agent's action method (`act`, `select_action`, `get_action`) that
    switches `self.<net>` to eval mode and never back (`self.qnetwork_local.eval()` before
    choosing an action), when another method of the class trains that network (calls it,
    back-propagates and steps an optimizer the class builds over its parameters: `learn`)
    and nothing in the class ever calls `self.<net>.train()`: acting is interleaved with the
    updates, so every update after the first action runs in eval mode. Not a network known to
    have no dropout or batch norm, nor one no optimizer of the class trains (a target copy),
    nor a switch in a method that loads, tests or predicts.

    Not reported: `.eval()` on an averaged copy (`model_ema.eval()`) or on a fresh copy
    (`copy.deepcopy(net).eval()` for a snapshot): the trained model keeps its mode. Nor a
    helper that switches to eval mode only under a flag the training function clears before
    its loop (an RL agent's `select_action` with `if self.is_test: self.dqn.eval()`, called
    after `self.is_test = False`).

    Example:
        model.train()
        for epoch in range(epochs):
            for x, y in loader:
                ...
            validate(model)   # calls model.eval()

    Fix: call `model.train()` at the top of each epoch (or at the end of the validation
    function).
    """

    id = "train-mode-not-restored"
    point = 3
    severity = Severity.HIGH
    title = "Training continues in eval mode after validation"
    items: ClassVar[tuple[str, ...]] = ("3.4",)

    def applies(self, ctx: ModuleContext) -> bool:
        return "backward" in ctx.source and (
            bool(ctx.loops.training_loops)
            or ("eval()" in ctx.source and bool(_left_in_eval_by_a_method(ctx)))
        )

    def finish(self, ctx: ModuleContext) -> None:
        if "eval()" in ctx.source or is_package_init(ctx):
            publish(ctx)  # its functions that leave a model in eval mode, for their callers
        if "eval()" in ctx.source and "backward" in ctx.source:
            for switch, method, learner in _left_in_eval_by_a_method(ctx):
                model = ast.unparse(getattr(switch.func, "value", switch.func))
                ctx.report(
                    self,
                    switch,
                    f"`{ast.unparse(switch)}` in `{method.name}` is never undone, and "
                    f"`{learner.name}` trains `{model}` (backward and step) without "
                    "`.train()`: after the first call every update runs in eval mode, dropout "
                    "off and BatchNorm frozen",
                    data={"loop_line": learner.lineno},
                )
        if not ("backward" in ctx.source and ctx.loops.training_loops):
            return
        verdicts: dict[int, bool] = {}
        self._imported_evaluations(ctx, verdicts)
        flow = ctx.flow
        evaluating = flow.functions_reaching("eval")
        if not evaluating and "eval()" not in ctx.source and "train(False)" not in ctx.source:
            return  # (a dispatcher's `set_training(False)` reaches eval with neither text)
        reported: set[int] = set()
        around_eval = flow.calls_containing_mode("eval")
        for call in flow.nodes(ast.Call):
            evals = id(call) in around_eval and flow.methods_called(call) == {"eval"}
            if not evals and local_callee(call) not in evaluating:
                continue
            if not evals and flow.dispatched_mode(call) == "train":
                continue  # `set_mode('train', models)`: the dispatcher's train branch only
            if evals and _averaged_copy(call):
                continue  # an EMA copy is sampled, never trained: eval mode is its mode
            if evals and _fresh_copy(ctx, call):
                continue  # `copy.deepcopy(net).eval()`: the snapshot's mode, not the model's
            if _without_mode_layers(ctx, call, evals):
                continue  # no dropout or batch norm: eval mode changes nothing it computes
            loop = self._innermost_unrestored_loop(ctx, call, verdicts)
            if loop is None or id(loop) in reported or _on_the_evaluation_pass(ctx, call, loop):
                continue
            if not evals and _switched_only_under_a_cleared_flag(ctx, call, loop):
                continue
            reported.add(id(loop))
            ctx.report(
                self,
                call,
                "this loop puts the model in eval mode and never calls .train() again: "
                "later epochs train with dropout off and BatchNorm frozen",
                data={"loop_line": loop.lineno, **_model_switched(ctx, call, evals)},
            )

    def _imported_evaluations(self, ctx: ModuleContext, verdicts: dict[int, bool]) -> None:
        """`evaluate(model, val_loader)` imported from another file, called in a training
        loop that never calls `.train()`: the project pass keeps it when that function leaves
        the model it is given in eval mode. One finding a loop and function: a loop that
        validates on seven benchmarks with seven calls has one bug."""
        reported: set[tuple[int, str]] = set()
        for call in ctx.flow.nodes(ast.Call):
            if not call.args or local_callee(call) in ctx.flow.functions:
                continue
            symbol = project_symbol(ctx, call.func)
            if symbol is None:
                continue
            loop = self._innermost_unrestored_loop(ctx, call, verdicts)
            if loop is None or (id(loop), symbol) in reported:
                continue
            if _on_the_evaluation_pass(ctx, call, loop):
                continue
            reported.add((id(loop), symbol))
            found = ctx.finding(
                self,
                call,
                f"`{symbol}` puts the model in eval mode and this loop never calls .train() "
                "again: later steps train with dropout off and BatchNorm frozen",
                data={"loop_line": loop.lineno},
            )
            if found is not None:
                defer(
                    ctx,
                    self.id,
                    Pending(symbol=symbol, needs="leaves-model-in-eval", finding=found),
                )

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        return ProjectIndex.from_facts(facts).confirmed(facts, cls.id)

    @staticmethod
    def _innermost_unrestored_loop(
        ctx: ModuleContext, call: ast.Call, verdicts: dict[int, bool]
    ) -> ast.For | ast.While | ast.AsyncFor | None:
        for anc in ctx.ancestors(call):
            if isinstance(anc, _SCOPES):
                return None
            if not isinstance(anc, _LOOPS):
                continue
            if id(anc) not in verdicts:
                verdicts[id(anc)] = (
                    ctx.loops.trains(anc.body)
                    and not ctx.flow.reaches_method(anc.body, "train")
                    and not _sets_its_own_mode(ctx, anc.body)
                )
            if verdicts[id(anc)]:
                return anc
        return None


def _on_the_evaluation_pass(ctx: ModuleContext, call: ast.Call, loop: ast.AST) -> bool:
    """The loop serves both phases and `call` runs only on the evaluation pass (demucs'
    `if not train and self.args.valid_apply: estimate = apply_model(self.model, ...)` where
    the backward runs under `if train:`): no step of that pass trains, and the training
    pass never reaches the switch."""
    flags = phase_flags(ctx, loop)
    return bool(flags) and off_phase(ctx, call, loop, flags)


def _switched_only_under_a_cleared_flag(ctx: ModuleContext, call: ast.Call, loop: ast.AST) -> bool:
    """The callee puts a model in eval mode only under a flag (`if self.is_test:
    self.dqn.eval()` in an RL agent's `select_action`) that the caller sets to False before
    the loop and the loop never sets again: the training loop never takes that branch."""
    caller = ctx.enclosing_function(loop)
    callees = ctx.flow.functions.get(local_callee(call), [])
    if caller is None or len(callees) != 1 or not isinstance(loop, ast.stmt):
        return False
    switches = [
        c
        for c in walk_tree(callees[0])
        if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute) and c.func.attr == "eval"
    ]
    flags: set[str] = set()
    for switch in switches:
        guards = [
            ast.unparse(guard.test)
            for guard, part in enclosing_ifs(ctx, switch, callees[0])
            if part == "body" and isinstance(guard.test, ast.Name | ast.Attribute)
        ]
        if not guards:
            return False
        flags.add(guards[0])
    cleared = {
        ast.unparse(target)
        for node in walk_tree(caller)
        if isinstance(node, ast.Assign)
        and node.lineno < loop.lineno
        and isinstance(node.value, ast.Constant)
        and node.value.value is False
        for target in node.targets
    }
    set_in_loop = {
        ast.unparse(target)
        for node in walk_tree(loop)
        if isinstance(node, ast.Assign)
        for target in node.targets
    }
    return bool(flags) and flags <= cleared and not flags & set_in_loop


_AVERAGED = re.compile(r"(?:^|[._])(?:ema|swa)(?:$|[._])|averaged", re.IGNORECASE)


def _averaged_copy(call: ast.Call) -> bool:
    """`self.ema.ema_model.eval()`, `model_ema.eval()`, `swa_model.eval()`: an averaged copy
    of the weights, updated from the trained model and never trained itself."""
    func = call.func
    while isinstance(func, ast.Call | ast.Attribute):
        func = func.func if isinstance(func, ast.Call) else func.value
        if isinstance(func, ast.Attribute) and _AVERAGED.search(func.attr):
            return True
        if isinstance(func, ast.Name) and _AVERAGED.search(func.id):
            return True
    return False


_COPIES = frozenset({"copy.deepcopy", "copy.copy"})


def _without_mode_layers(ctx: ModuleContext, call: ast.Call, evals: bool) -> bool:
    """`model.eval()`, or an evaluation helper handed the model (`test_step(model=model_1,
    loss_fn=...)`), of a model built here whose layers all ignore the mode (a course
    notebook's stack of `Linear`s and `ReLU`s): training it in eval mode changes nothing."""
    if evals:
        return isinstance(call.func, ast.Attribute) and mode_independent(ctx, call.func.value)
    handed = [*call.args, *(k.value for k in call.keywords)]
    models = [
        value
        for value in handed
        if isinstance(value, ast.Name)
        and not LOSS_NAME.search(value.id)
        and ctx.flow.is_module_value(value)
    ]
    return bool(models) and all(mode_independent(ctx, model) for model in models)


def _model_switched(ctx: ModuleContext, call: ast.Call, evals: bool) -> dict[str, Any]:
    """What the fix needs: the model put in eval mode (`model` in `model.eval()`, the one
    model an evaluation helper is handed) and whether the call is the `.eval()` itself."""
    if evals:
        while (  # `net.eval().requires_grad_(False)`: down to the `.eval()`
            isinstance(call.func, ast.Attribute)
            and call.func.attr not in ("eval", "train")
            and isinstance(call.func.value, ast.Call)
        ):
            call = call.func.value
        receiver = call.func.value if isinstance(call.func, ast.Attribute) else None
        if isinstance(receiver, ast.Name | ast.Attribute):
            return {"model": ast.unparse(receiver), "direct": True}
        return {}
    handed = [
        value
        for value in [*call.args, *(k.value for k in call.keywords)]
        if isinstance(value, ast.Name | ast.Attribute)
        and not LOSS_NAME.search(ast.unparse(value))
        and ctx.flow.is_module_value(value)
    ]
    if len(handed) == 1:
        return {"model": ast.unparse(handed[0]), "direct": False}
    switched = _globals_put_in_eval(ctx, local_callee(call))
    return {"model": switched.pop(), "direct": False} if len(switched) == 1 else {}


def _globals_put_in_eval(ctx: ModuleContext, name: str) -> set[str]:
    """The names, not parameters of theirs, that the local functions called `name` put in
    eval mode (pyGAT's `train(epoch)` and pytorch-cifar100's `eval_training(epoch)` call
    `model.eval()` / `net.eval()` on the script's global model)."""
    found: set[str] = set()
    for fn in ctx.flow.functions.get(name, []):
        parameters = {a.arg for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]}
        for node in walk_tree(fn):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "eval"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id not in parameters
            ):
                found.add(node.func.value.id)
    return found


def _fresh_copy(ctx: ModuleContext, call: ast.Call) -> bool:
    """`copy.deepcopy(net).eval()`, or `.eval()` on a name only ever bound to such a copy (a
    snapshot saved to disk): another object than the model the loop trains."""
    while (  # `copy.deepcopy(net).eval().requires_grad_(False)`: down to the `.eval()`
        isinstance(call.func, ast.Attribute)
        and call.func.attr not in ("eval", "train")
        and isinstance(call.func.value, ast.Call)
    ):
        call = call.func.value
    receiver = call.func.value if isinstance(call.func, ast.Attribute) else None
    if isinstance(receiver, ast.Name):
        bound = list(ctx.flow.definitions(receiver))
        return bool(bound) and all(
            isinstance(value, ast.Call) and ctx.flow.qualname_of(value) in _COPIES
            for value in bound
        )
    return isinstance(receiver, ast.Call) and ctx.flow.qualname_of(receiver) in _COPIES


def _sets_its_own_mode(ctx: ModuleContext, body: list[ast.stmt]) -> bool:
    """The loop trains through a local function that sets its own mode first: each
    iteration's mode comes from it, not from what the evaluation left."""
    return any(
        isinstance(n, ast.Call) and _trains_in_its_own_mode(ctx, local_callee(n))
        for stmt in body
        for n in walk_tree(stmt)
    )


def _trains_in_its_own_mode(ctx: ModuleContext, callee: str | None) -> bool:
    """A local function that calls `.eval()` before it back-propagates and steps (SimSiam's
    `train()` for linear classification calls `model.eval()` on purpose: a frozen backbone
    with frozen BatchNorm): it sets the mode it trains in."""
    if not callee:
        return False
    return any(
        ctx.loops.trains(fn.body) and _first_line(fn, "eval") < _first_line(fn, "backward")
        for fn in ctx.flow.functions.get(callee, [])
    )


def _first_line(fn: ast.AST, method: str) -> float:
    """The first line of `fn` calling `.method()` (infinity when none does)."""
    lines = [
        n.lineno
        for n in walk_tree(fn)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == method
    ]
    return min(lines, default=float("inf"))


def _self_mode_switch(node: ast.AST, to_train: bool) -> str | None:
    """`self.net.train()` (`to_train`) or `self.net.eval()` / `self.net.train(False)`: the
    attribute switched, else None."""
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Attribute)
        and isinstance(node.func.value.value, ast.Name)
        and node.func.value.value.id == "self"
    ):
        return None
    attr = node.func.attr
    off = attr == "train" and switches_to_eval(node)
    if to_train and attr == "train" and not off:
        return node.func.value.attr
    if not to_train and (attr == "eval" or (attr == "train" and off)):
        return node.func.value.attr
    return None


def _left_in_eval_by_a_method(
    ctx: ModuleContext,
) -> list[tuple[ast.Call, ast.FunctionDef, ast.FunctionDef]]:
    memo = ctx.memo_table("train_mode_not_restored.left_in_eval")
    if "" not in memo:
        memo[""] = _find_left_in_eval(ctx)
    found: list[tuple[ast.Call, ast.FunctionDef, ast.FunctionDef]] = memo[""]
    return found


def _find_left_in_eval(
    ctx: ModuleContext,
) -> list[tuple[ast.Call, ast.FunctionDef, ast.FunctionDef]]:
    """An agent's `act` that calls `self.qnetwork_local.eval()` and never `.train()`, in a
    class whose other method (`learn`) back-propagates a loss of `self.qnetwork_local(...)`
    and steps an optimizer, while nothing in the class ever calls
    `self.qnetwork_local.train()`: every update after the first action runs in eval mode.
    (the eval call, its method, the training method)"""
    found: list[tuple[ast.Call, ast.FunctionDef, ast.FunctionDef]] = []
    for cls in ctx.flow.nodes(ast.ClassDef):
        methods = [m for m in cls.body if isinstance(m, ast.FunctionDef)]
        restored = {
            attr
            for m in methods
            for n in walk_tree(m)
            if (attr := _self_mode_switch(n, to_train=True)) is not None
        }
        optimised = _optimised_attributes(cls)
        for method in methods:
            if not _ACTING.match(method.name):
                continue  # acting is interleaved with the updates; loading or testing is not
            for node in walk_tree(method):
                attr = _self_mode_switch(node, to_train=False)
                if attr is None or attr in restored or attr not in optimised:
                    continue
                assert isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                if mode_independent(ctx, node.func.value):
                    continue  # no dropout or batch norm: the mode changes nothing
                learner = next((m for m in methods if _trains_attribute(m, attr)), None)
                if learner is not None and learner is not method:
                    found.append((node, method, learner))
                    break
    return found


_ACTING = re.compile(r"^_?(act|(select|get|choose|take|sample|pick)_actions?|policy_action)$")


def _optimised_attributes(cls: ast.ClassDef) -> set[str]:
    """`self.<net>` attributes whose `.parameters()` an optimizer of the class is built over
    (`optim.Adam(self.qnetwork_local.parameters(), lr=lr)`): networks it trains, not target
    copies or frozen encoders."""
    found: set[str] = set()
    for node in walk_tree(cls):
        if not (isinstance(node, ast.Call) and "optim" in ast.unparse(node.func)):
            continue
        for inner in walk_tree(node):
            if (
                isinstance(inner, ast.Call)
                and isinstance(inner.func, ast.Attribute)
                and inner.func.attr == "parameters"
                and isinstance(inner.func.value, ast.Attribute)
                and isinstance(inner.func.value.value, ast.Name)
                and inner.func.value.value.id == "self"
            ):
                found.add(inner.func.value.attr)
    return found


def _trains_attribute(method: ast.FunctionDef, attr: str) -> bool:
    """The method calls `self.<attr>(...)`, back-propagates and steps an optimizer."""
    runs = backward = step = False
    for node in walk_tree(method):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        func = node.func
        if func.attr == attr and isinstance(func.value, ast.Name) and func.value.id == "self":
            runs = True
        elif func.attr == "backward":
            backward = True
        elif func.attr == "step" and not node.args:
            step = True
    return runs and backward and step
