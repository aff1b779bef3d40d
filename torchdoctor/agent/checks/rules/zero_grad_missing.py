"""zero-grad-missing: a training loop never clears gradients."""

from __future__ import annotations

import ast
import re
from typing import Any, ClassVar

from torchdoctor.agent.checks.analysis.defuse import identifier, kwarg
from torchdoctor.agent.checks.analysis.optimizers import parameter_owners
from torchdoctor.agent.checks.analysis.project import (
    Pending,
    ProjectIndex,
    callee_symbol,
    clears_own_gradients,
    defer,
    passed_for_parameter,
    project_symbol,
    star_modules,
)
from torchdoctor.agent.checks.analysis.vocabulary import OPTIMIZER_NAMES, OPTIMIZERS
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.checks.loops import (
    Effects,
    FunctionNode,
    direct_effects,
    enclosing_ifs,
    is_backward_call,
    is_optimizer_step,
    receiver_name,
    walk_scope,
    walk_tree,
)
from torchdoctor.agent.models import Severity


class ZeroGradMissing(Rule):
    """Detects a training loop that calls `backward()` and `optimizer.step()` but never
    `zero_grad()` (nor sets `p.grad = None`), directly or through the functions it calls.

    Why it matters: gradients accumulate across iterations, so every step applies the sum of
    all previous gradients; training diverges or silently follows the wrong direction.
    Gradient accumulation that zeroes every k steps is fine and is not reported. With several
    optimizers (a GAN's generator and discriminator), one stepped in the loop whose own
    `zero_grad()` never runs there is reported at its `step()`, when every clearing call in
    the loop names another stepped optimizer (a module's `zero_grad()` or `p.grad = None`
    may clear anything, and keeps the rule quiet, unless the module is one that another
    stepped optimizer is built on: DDPG's `self.critic.zero_grad()` does not clear
    `self.actor_optim = Adam(self.actor.parameters())`). So is an update function with no loop
    of its own, called once per step from elsewhere (TD3's `train(self, replay_buffer)`:
    the critic's and the actor's updates), that clears some of the optimizers it steps but
    not another. And an update function with no loop of its own that back-propagates and
    steps an optimizer built in the same file (a trainer's or an agent's `train(self, x, y)`
    around `self.optimizer = Adam(self.model.parameters())`, run by a loop in another file)
    in a file that clears no gradients anywhere: each call steps on the sum of every earlier
    call's gradients. Not when the file clears gradients anywhere (the caller's loop may clear
    through it), when a loop of the same file calls the function (that loop is judged),
    when the optimizer arrives from outside (a parameter, another file), or when the function
    builds both the optimizer and every parameter or model it updates (a test's one step to
    give the optimizer state: each call starts from empty gradients). A loop whose only
    `zero_grad()` sits on
    one branch of an `if` (the AMP path) while the other branch calls `backward()` and
    `step()` is reported at that other branch's `backward()`. An engine that runs both the
    backward and the step (`engine.backward(loss)`, `engine.step()`: DeepSpeed) clears the
    gradients itself and is not reported, nor is a loop whose every `step()` returns the
    value it computes and steps no optimizer (a PGD attack's `x = step.step(x, grad)`).

    Also reported: an optimizer step in a loop whose model an earlier update's loss reached
    (a GAN's discriminator loss on a fake batch it did not detach puts gradients into G),
    with no clearing of that optimizer or its model that runs whenever the step does between
    that backward and the step: Self-Attention-GAN's generator step without its reset steps
    on the discriminator loss's gradients too. Not when the earlier update's loss never
    reaches the model (`netD(fake.detach())`), or the clear sits on the step's own branch.

    Example:
        for x, y in loader:
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()

    Fix: call `optimizer.zero_grad(set_to_none=True)` at the top of each iteration (or after
    each `step()` when accumulating).
    """

    id = "zero-grad-missing"
    point = 4
    severity = Severity.HIGH
    title = "Gradients are never cleared in the training loop"
    items: ClassVar[tuple[str, ...]] = ("4.3",)

    def applies(self, ctx: ModuleContext) -> bool:
        return any(loop.kind == "loop" for loop in ctx.loops.training_loops)

    def finish(self, ctx: ModuleContext) -> None:
        reported: set[int] = set()
        for loop in ctx.loops.training_loops:
            if loop.kind != "loop":
                continue
            if loop.effects.zero_grad:
                self._report_uncleared(ctx, loop.effects, reported, "this loop", "iterations")
                backward = _backward_on_uncleared_branch(ctx, loop.node, loop.effects)
                if backward is not None and id(backward) not in reported:
                    reported.add(id(backward))
                    ctx.report(
                        self,
                        backward,
                        "this backward() and its step() run on a branch whose alternative "
                        "alone calls zero_grad(): on this path gradients accumulate across "
                        "iterations",
                    )
                continue
            if _engine_steps(ctx, loop.effects) or _steps_values_only(ctx, loop.effects):
                continue
            models = _called_models(ctx, loop.node)
            if any(isinstance(model, ast.ClassDef) for model in models):
                continue  # this file's model clears its own gradients when called
            node: ast.AST = loop.node
            message = (
                "this loop calls backward() and step() but never zero_grad(): "
                "gradients accumulate across iterations"
            )
            data = {"backward_line": loop.effects.backward[0].lineno}
            if not models:
                ctx.report(self, node, message, data=data, header_only=True)
                continue
            found = ctx.finding(self, node, message, data=data, header_only=True)
            if found is not None:
                for symbol in models:
                    assert isinstance(symbol, str)
                    defer(
                        ctx,
                        self.id,
                        Pending(symbol=symbol, needs="clears-no-gradients", finding=found),
                    )
        for fn, effects in _update_functions(ctx):
            self._report_uncleared(ctx, effects, reported, f"`{fn.name}`", "the calls")
        for fn, step in _never_cleared_update_functions(ctx):
            if id(step) in reported:
                continue
            reported.add(id(step))
            assert isinstance(step.func, ast.Attribute)
            ctx.report(
                self,
                step,
                f"`{ast.unparse(step.func.value)}` steps in `{fn.name}`, which back-propagates "
                "once per call, but nothing in this file ever clears its gradients: they "
                "accumulate across calls",
            )
        if "backward" in ctx.source and "zero_grad" in ctx.source:
            for loop in ctx.loops.training_loops:
                if loop.kind != "loop" or len(loop.effects.step) < 2:
                    continue
                for step, earlier, other in _stale_gradients(ctx, loop.node):
                    if id(step) in reported:
                        continue
                    reported.add(id(step))
                    assert isinstance(step.func, ast.Attribute)
                    ctx.report(
                        self,
                        step,
                        f"`{ast.unparse(step.func.value)}` steps with gradients nothing cleared "
                        f"since `{ast.unparse(earlier)}` (line {earlier.lineno}), whose loss "
                        f"also reaches its model, ran for `{ast.unparse(other.func)}` (line "
                        f"{other.lineno}): this update follows the sum of both losses; clear "
                        "its gradients after that step",
                        data={"backward_line": earlier.lineno},
                    )

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        """A loop calling another file's model, reported unless that class clears its own
        gradients (`self.zero_grad()` in its forward)."""
        return ProjectIndex.from_facts(facts).confirmed(facts, cls.id)

    def _report_uncleared(
        self, ctx: ModuleContext, effects: Effects, reported: set[int], where: str, across: str
    ) -> None:
        """One finding per optimizer that steps in `where` (a loop, an update function) while
        only the others' gradients are cleared there."""
        for step, name, cleared in _uncleared_optimizers(ctx, effects):
            if id(step) in reported:
                continue
            reported.add(id(step))
            ctx.report(
                self,
                step,
                f"`{name}` steps in {where} but its gradients are never cleared ({where} "
                f"clears only {', '.join(f'`{c}`' for c in sorted(cleared))}): they "
                f"accumulate across {across}",
            )


def _called_models(ctx: ModuleContext, loop: ast.AST) -> list[ast.ClassDef | str]:
    """The model classes the loop calls (`loss = model(x, y)`): this file's classes whose
    methods call `self.zero_grad()` (the loop then clears through them), or the qualified
    names of classes from other files (a star import's: one per star-imported module),
    which the project pass asks."""
    found: list[ast.ClassDef | str] = []
    for call in walk_tree(loop):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
            continue
        for constructor in ctx.flow.constructors(call.func):
            func = constructor.func
            if not isinstance(func, ast.Name):
                continue
            local = ctx.flow.classes.get(func.id)
            if local is not None:
                if clears_own_gradients(local):
                    found.append(local)
                continue
            if callee_symbol(ctx, func) is not None:  # imported by name: a library's or ours
                symbols = [s for s in [project_symbol(ctx, func)] if s]
            else:
                symbols = [f"{m}.{func.id}" for m in star_modules(ctx)]
            found += [s for s in symbols if s not in found]
    return found


def _update_functions(ctx: ModuleContext) -> list[tuple[FunctionNode, Effects]]:
    """Functions that back-propagate and step two or more optimizers with no loop around
    either inside them: an update run once per call (an actor-critic's `train()`), each
    call a training step."""
    if "zero_grad" not in ctx.source:
        return []
    found: list[tuple[FunctionNode, Effects]] = []
    for defs in ctx.loops.functions.values():
        for fn in defs:
            effects = direct_effects(fn.body)
            if not (effects.backward and effects.zero_grad and len(effects.step) > 1):
                continue
            if any(_in_loop_of(ctx, node, fn) for node in [*effects.step, *effects.backward]):
                continue  # the loop's analysis judges it
            found.append((fn, effects))
    return found


# any way of clearing gradients, by name or by hand
_CLEARING_TEXT = ("zero_grad", "grad = None", "grad=None", "grad.zero_", "grad.data.zero_")


def _never_cleared_update_functions(ctx: ModuleContext) -> list[tuple[FunctionNode, ast.Call]]:
    """(function, its first optimizer step) for functions with no loop around their
    `backward()` and `step()` that step an optimizer built in this file, in a file that
    clears gradients nowhere and runs no loop calling them."""
    source = ctx.source
    if any(text in source for text in _CLEARING_TEXT) or "backward" not in source:
        return []
    looped = set().union(*(loop.effects.callees for loop in ctx.loops.training_loops))
    found: list[tuple[FunctionNode, ast.Call]] = []
    for name, defs in ctx.loops.functions.items():
        if name in looped:
            continue
        for fn in defs:
            effects = ctx.loops.effects_of(fn.body)
            if not (effects.backward and effects.step) or effects.zero_grad:
                continue
            if any(_in_loop_of(ctx, node, fn) for node in [*effects.step, *effects.backward]):
                continue  # the loop's analysis judges it
            if _engine_steps(ctx, effects) or _steps_values_only(ctx, effects):
                continue
            steps = [
                step
                for step in effects.step
                if isinstance(step.func, ast.Attribute)
                and ctx.enclosing_function(step) is fn
                and _built_here(ctx, step)
                and not _fresh_per_call(ctx, fn, step)
            ]
            if steps:
                found.append((fn, steps[0]))
    return found


def _built_here(ctx: ModuleContext, step: ast.Call) -> bool:
    """The stepped optimizer is constructed in this file (`self.optimizer = optim.Adam(...)`
    in the class's `__init__`, `opt = torch.optim.SGD(...)`)."""
    assert isinstance(step.func, ast.Attribute)
    target = step.func.value
    if step.args and "scaler" in receiver_name(step).lower():
        target = step.args[0]
    return any(
        ctx.flow.qualname_of(built) in OPTIMIZERS
        or ast.unparse(built.func).rpartition(".")[2] in OPTIMIZER_NAMES
        for built in ctx.flow.constructors(target)
    )


def _fresh_per_call(ctx: ModuleContext, fn: FunctionNode, step: ast.Call) -> bool:
    """The stepped optimizer and every model or parameter it updates are built in `fn`
    itself (a test's `p = nn.Parameter(torch.zeros(0))`, `opt = SGD([p])`; `policy =
    make_dummy_policy()`, `Adam(policy.parameters())`): each call starts from new
    parameters with no gradient, so nothing accumulates across calls."""
    made = {
        target.id
        for node in walk_scope(fn.body)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    assert isinstance(step.func, ast.Attribute)
    receiver = step.func.value
    if not (isinstance(receiver, ast.Name) and receiver.id in made):
        return False
    built = list(ctx.flow.constructors(receiver))
    for call in built:
        params = call.args[0] if call.args else kwarg(call, "params")
        if params is None or ctx.enclosing_function(call) is not fn:
            return False
        owners = parameter_owners(params)
        if (
            owners is None
            and isinstance(params, ast.Call)
            and isinstance(params.func, ast.Attribute)
            and isinstance(params.func.value, ast.Name)
            and "param" in params.func.attr
        ):
            owners = {params.func.value.id}  # `policy.get_optim_params()`
        if owners is None and isinstance(params, ast.List | ast.Tuple):
            elements = params.elts
            owners = {e.id for e in elements if isinstance(e, ast.Name)}
            if len(owners) != len(elements):
                return False
        if not owners or not owners <= made:
            return False
    return bool(built)


def _in_loop_of(ctx: ModuleContext, node: ast.AST, fn: FunctionNode) -> bool:
    for anc in ctx.ancestors(node):
        if anc is fn:
            return False
        if isinstance(anc, ast.For | ast.AsyncFor | ast.While):
            return True
    return False


def _engine_steps(ctx: ModuleContext, effects: Effects) -> bool:
    """Every `step()` is called on a model that also runs the backward (`model.backward(
    loss)` then `model.step()`: a DeepSpeed engine, gpt-neox's train step), which clears the
    gradients itself after stepping (an optimizer wrapper's `optimizer.backward(loss)`, as
    apex's FP16_Optimizer, does not)."""
    steps = [s for s in effects.step if isinstance(s.func, ast.Attribute)]
    engines = {
        ast.unparse(b.func.value)
        for b in effects.backward
        if isinstance(b, ast.Call) and isinstance(b.func, ast.Attribute) and b.args
    }
    return bool(steps) and all(
        isinstance(s.func, ast.Attribute)
        and ast.unparse(s.func.value) in engines
        and ctx.flow.is_module_value(s.func.value)
        for s in steps
    )


# `optimizer_D`, `g_optim`, `opt`, `opt_g`, `optD`, `d_opt2`
_OPTIMIZER_NAME = re.compile(r"[Oo]ptim|(^|_)[Oo]pt(_|$|\d|[A-Z])")


def _uncleared_optimizers(
    ctx: ModuleContext, effects: Effects
) -> list[tuple[ast.Call, str, set[str]]]:
    """(step call, optimizer, the optimizers cleared) for each optimizer the loop steps but
    never clears, when every clearing call names a stepped optimizer."""
    stepped: dict[str, ast.Call] = {}
    for step in effects.step:
        name = _stepped_optimizer(ctx, step)
        if name is None:
            continue
        stepped.setdefault(name, step)
    cleared: set[str] = set()
    for node in effects.zero_grad:
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            return []  # `p.grad = None`: any parameter may be cleared
        cleared.add(ast.unparse(node.func.value))
    if not cleared:
        return []
    owners = {name: _parameter_owners(ctx, step) for name, step in stepped.items()}
    known_owners = {o for found in owners.values() if found is not None for o in found}
    if not cleared <= set(stepped) | known_owners:
        return []  # a helper's loop variable, a module no optimizer here is built on: any
    modules = cleared - set(stepped)  # `self.critic.zero_grad()`: what it is the owner of
    uncleared = []
    for name, step in stepped.items():
        found = owners[name]
        if name in cleared or (modules and (found is None or found & modules)):
            continue  # its own zero_grad, or its parameters' module's (or possibly theirs)
        uncleared.append((step, name, cleared))
    return uncleared


_PARAMETER_ITERATORS = frozenset({"parameters", "named_parameters"})


def _parameter_owners(ctx: ModuleContext, step: ast.Call) -> set[str] | None:
    """The modules whose `.parameters()` the stepped optimizer was built on (`self.actor_optim
    = Adam(self.actor.parameters(), lr)` -> {'self.actor'}); None when not seen (built
    elsewhere, from a list of parameter groups, or from a parameter)."""
    assert isinstance(step.func, ast.Attribute)
    target = step.func.value
    if step.args and "scaler" in receiver_name(step).lower():
        target = step.args[0]
    owners: set[str] = set()
    for built in ctx.flow.constructors(target):
        given = built.args[0] if built.args else argument_value(built, "params")
        if given is None:
            return None
        found = {
            ast.unparse(call.func.value)
            for call in ast.walk(given)
            if isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr in _PARAMETER_ITERATORS
        }
        if not found:
            return None
        owners |= found
    return owners or None


def argument_value(call: ast.Call, keyword: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == keyword), None)


def _stepped_optimizer(ctx: ModuleContext, step: ast.Call) -> str | None:
    """`opt` in `opt.step()` and `scaler.step(opt)`, when it holds a torch optimizer or is
    named like one (`env.step(action)` steps no optimizer)."""
    assert isinstance(step.func, ast.Attribute)
    target: ast.expr = step.func.value
    qual = ctx.flow.constructed_as(target) or ""
    if (qual.endswith("GradScaler") or "scaler" in receiver_name(step).lower()) and step.args:
        target = step.args[0]
        qual = ctx.flow.constructed_as(target) or ""
    if not isinstance(target, ast.Name | ast.Attribute):
        return None
    name = target.attr if isinstance(target, ast.Attribute) else target.id
    built = qual.startswith("torch.optim.") and "lr_scheduler" not in qual
    if built or (_OPTIMIZER_NAME.search(name) and not _plain_local_object(ctx, target)):
        return ast.unparse(target)
    return None


def _steps_values_only(ctx: ModuleContext, effects: Effects) -> bool:
    """Every `step()` of the loop returns the value it computes and none steps an optimizer
    (MadryLab's PGD attack: `x = step.step(x, grad)` moves the input; `obs = env.step(a)`):
    no parameter is updated from the accumulated gradients."""
    return bool(effects.step) and all(
        isinstance(ctx.parents.get(step), ast.Assign | ast.AugAssign | ast.AnnAssign)
        and _stepped_optimizer(ctx, step) is None
        for step in effects.step
    )


def _plain_local_object(ctx: ModuleContext, target: ast.expr) -> bool:
    """Every value `target` may hold (its bindings, or what this module's calls pass for it
    when it is a parameter: `train(..., ema_optimizer)` called with `WeightEMA(model,
    ema_model)`) is built by a class of this module that derives from nothing: an averaging
    helper named like an optimizer, whose `step()` copies weights and reads no gradient."""
    if not isinstance(target, ast.Name):
        return False
    values: list[ast.expr] = []
    for value in [*ctx.flow.definitions(target), *passed_for_parameter(ctx, target)]:
        if value is target:
            continue
        found = ctx.flow.definitions(value) if isinstance(value, ast.Name) else [value]
        if not found:
            return False
        values += found
    if not values:
        return False
    for call in values:
        func = call.func if isinstance(call, ast.Call) else None
        cls = ctx.flow.classes.get(func.id) if isinstance(func, ast.Name) else None
        if cls is None or cls.name in ctx.flow.module_classes or cls.keywords:
            return False
        if any(identifier(base) != "object" for base in cls.bases):
            return False
    return True


def _branches(ctx: ModuleContext, node: ast.AST, loop: ast.AST) -> dict[int, str] | None:
    """For each `if` between `node` and `loop`, the part `node` is on; None when `node` is
    not inside `loop` (a helper's call)."""
    if not any(anc is loop for anc in ctx.ancestors(node)):
        return None
    return {id(branch): part for branch, part in enclosing_ifs(ctx, node, loop)}


def _exclusive(one: dict[int, str], other: dict[int, str]) -> bool:
    """Whether two nodes sit on different branches of one `if` (never both run)."""
    return any(key in other and other[key] != branch for key, branch in one.items())


def _backward_on_uncleared_branch(
    ctx: ModuleContext, loop: ast.AST, effects: Effects
) -> ast.Call | None:
    """A `backward()` of the loop, followed on its own branch by a `step()`, that no
    `zero_grad()` of the loop can accompany: every clearing call is on another branch of an
    `if` around it (`if amp: opt.zero_grad(); scaled backward ... else: loss.backward()`)."""
    clears = [_branches(ctx, z, loop) for z in effects.zero_grad]
    if any(c is None for c in clears):
        return None  # cleared inside a called helper: its path is not known here
    steps = [b for b in (_branches(ctx, s, loop) for s in effects.step) if b is not None]
    for backward in effects.backward:
        where = _branches(ctx, backward, loop)
        if not where:
            continue
        if all(c is not None and _exclusive(where, c) for c in clears) and any(
            not _exclusive(where, s) for s in steps
        ):
            return backward
    return None


def _stale_gradients(
    ctx: ModuleContext, loop: ast.AST
) -> list[tuple[ast.Call, ast.Call, ast.Call]]:
    """(step, earlier backward, the other optimizer's step) for each optimizer step of the
    loop body whose model an earlier update's loss reached (a GAN's discriminator step on a
    fake batch it did not detach: `d_loss.backward()` puts gradients into G), with no
    clearing of that optimizer (or its model) run unconditionally between that backward and
    this update's own backward: Self-Attention-GAN's generator step without its
    `self.reset_grad()` steps on the discriminator loss's gradients too."""
    from torchdoctor.agent.checks.rules.detached_loss_input import _paths_to_model

    body = loop.body if isinstance(loop, ast.For | ast.AsyncFor | ast.While) else []
    events: list[tuple[str, ast.Call, set[str]]] = []
    for node in walk_scope(body):
        if not isinstance(node, ast.Call):
            continue
        if is_backward_call(node) and isinstance(node.func, ast.Attribute) and not node.args:
            events.append(("backward", node, set()))
        elif is_optimizer_step(node):
            events.append(("step", node, set()))
        elif cleared := _cleared_by(ctx, node):
            events.append(("clear", node, cleared))
    events.sort(key=lambda e: (e[1].lineno, e[1].col_offset))
    found: list[tuple[ast.Call, ast.Call, ast.Call]] = []
    for index, (kind, step, _) in enumerate(events):
        if kind != "step":
            continue
        optimizer = _stepped_optimizer(ctx, step)
        models = _parameter_owners(ctx, step) if optimizer is not None else None
        if optimizer is None or not models or len(models) != 1:
            continue
        (model,) = models
        here = _branches(ctx, step, loop) or {}
        backwards: list[ast.Call] = []
        others: list[ast.Call] = []
        for kind_before, call, cleared in reversed(events[:index]):
            there = _branches(ctx, call, loop) or {}
            if _exclusive(here, there):
                continue  # never runs in the iteration this step runs in
            if kind_before == "clear" and (optimizer in cleared or model in cleared):
                if all(here.get(key) == part for key, part in there.items()):
                    break  # it runs whenever the step does
                continue  # a clear on a branch of its own: another path skips it
            if kind_before == "backward":
                backwards.append(call)
            elif kind_before == "step" and _stepped_optimizer(ctx, call) != optimizer:
                others.append(call)
        if len(backwards) < 2:
            continue
        own, earlier = backwards[0], backwards[-1]
        between = [o for o in others if earlier.lineno < o.lineno < own.lineno]
        if not between:
            continue
        other_step = min(between, key=lambda o: (o.lineno, o.col_offset))
        assert isinstance(earlier.func, ast.Attribute)
        attached, _ = _paths_to_model(ctx, earlier.func.value, model)
        if attached:
            found.append((step, earlier, other_step))
    return found


def _cleared_by(ctx: ModuleContext, call: ast.Call) -> set[str]:
    """What a call clears, as written: `opt.zero_grad()` -> the optimizer (or module) it is
    called on; a local helper (`self.reset_grad()`) -> what its own clearing calls name."""
    if isinstance(call.func, ast.Attribute) and call.func.attr == "zero_grad":
        return {ast.unparse(call.func.value)}
    cleared: set[str] = set()
    for fn in ctx.calls.resolve(call):
        for node in direct_effects(fn.body).zero_grad:
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                cleared.add(ast.unparse(node.func.value))
    return cleared
