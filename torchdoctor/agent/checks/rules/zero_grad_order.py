"""zero-grad-order: gradients are cleared between backward() and step()."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import (
    Effects,
    direct_effects,
    enclosing_ifs,
    is_zero_grad,
    mentions_modulo,
    receiver_name,
    under_modulo_guard,
    walk_scope,
    walk_tree,
)
from torchdoctor.agent.models import Severity


class ZeroGradOrder(Rule):
    """Detects `zero_grad()` called after `backward()` and before `optimizer.step()` in the
    same training-loop iteration, and, under gradient accumulation (the optimizer steps only
    when `(i + 1) % k == 0`, or after an `if remaining > 1: continue` that follows the
    backward), a `zero_grad()` of that optimizer that runs on every iteration (or every call
    of a Lightning `training_step`): it clears the micro-batches' gradients before the step
    that should have summed them. So is a module's `zero_grad()` under Accelerate's `with
    accelerator.accumulate(model):`, which skips only the prepared optimizer's `step()` and
    `zero_grad()` between accumulation boundaries.

    Why it matters: the step then sees empty (or zero) gradients and updates nothing, or only
    applies weight decay; the model does not learn and no error is raised. With accumulation,
    each step uses one micro-batch instead of k: the effective batch is k times smaller than
    configured.

    Example:
        loss.backward()
        optimizer.zero_grad()
        optimizer.step()

    Also reported: a call of a local helper that only clears gradients (`self.reset_grad()`,
    whose body is `self.unet.zero_grad()`) placed there, and the same order inside a local
    function the loop calls on each iteration that back-propagates, clears and steps itself
    (a DQN notebook's `compute_td_loss(batch_size)`), or inside any function with no loop of
    its own that does all three (an RL agent's `train(self)` whose loop is in another file:
    DDPG's `a_loss.backward(); self.actor_optimizer.zero_grad(); self.actor_optimizer.step()`).

    Not reported: a clear followed by another `backward()` before the step (adversarial
    training: the attack's backward fills the weights' gradients too, `opt.zero_grad()`
    discards them, then the training loss back-propagates); `p.grad = None` on the
    parameters a condition selects in a loop over them (`if "prototypes" in name: p.grad =
    None`): those are frozen for this step on purpose and the others still update; nor
    `p.grad = None` in a loop over a list of chosen parameters that is not traced to every
    parameter of a model (TRPO keeps the actor's share of a network updated by its own line
    search out of the critic optimizer's step: `for p in actor_params: p.grad = None`); nor a
    clear on every iteration of an optimizer whose periodic step has its backward with it
    under the same `%` guard (a WGAN's generator trained every `n_critic` batches): no
    micro-batch accumulates into that step.

    Fix: clear gradients before the forward pass (or right after `step()`):
    `optimizer.zero_grad(set_to_none=True)`, then `loss.backward()`, then `optimizer.step()`;
    with accumulation, clear them right after the periodic `step()`, inside its `if`.
    """

    id = "zero-grad-order"
    point = 4
    severity = Severity.HIGH
    title = "zero_grad() between backward() and step()"
    items: ClassVar[tuple[str, ...]] = ("4.3",)

    def applies(self, ctx: ModuleContext) -> bool:
        return bool(ctx.loops.training_loops) or (
            "zero_grad" in ctx.source and "backward" in ctx.source
        )

    def finish(self, ctx: ModuleContext) -> None:
        if "zero_grad" not in ctx.source and ".grad = None" not in ctx.source:
            return
        checked = {id(loop.node) for loop in ctx.loops.training_loops}
        for loop in ctx.loops.training_loops:
            effects = direct_effects(loop.body)
            effects.zero_grad += _clearing_helper_calls(ctx, loop.node)
            reported: set[int] = set()
            self._clears_between(ctx, effects, reported)
            for step_function in _step_functions(ctx, loop.node):
                if id(step_function) not in checked:
                    checked.add(id(step_function))
                    self._clears_between(ctx, direct_effects(step_function.body), set())
            for clear, step in _clears_every_micro_step(ctx, loop.node, effects):
                if id(clear) in reported:
                    continue
                ctx.report(
                    self,
                    clear,
                    f"`{ast.unparse(clear)}` runs on every iteration but the optimizer steps "
                    f"only periodically (line {step.lineno}): the gradients accumulated since "
                    "the last step are discarded, each step uses one micro-batch",
                    data={"step_line": step.lineno},
                )
        for update in _update_functions(ctx):
            if id(update) not in checked:
                checked.add(id(update))
                self._clears_between(ctx, direct_effects(update.body), set())

    def _clears_between(self, ctx: ModuleContext, effects: Effects, reported: set[int]) -> None:
        """Report each clear that runs after a backward and before a step of one pass."""
        for clear in effects.zero_grad:
            line = getattr(clear, "lineno", 0)
            backward_lines = _lines_on_its_path(ctx, clear, effects.backward)
            step_lines = _lines_on_its_path(ctx, clear, effects.step)
            if any(b < line for b in backward_lines) and any(s > line for s in step_lines):
                last_backward = max(b for b in backward_lines if b < line)
                if any(last_backward < s < line for s in step_lines):
                    continue  # step() already ran after the latest backward
                step_after = min(s for s in step_lines if s > line)
                if any(line < b < step_after for b in backward_lines):
                    continue  # an input-gradient backward cleared before the real one
                if _selected_parameter(ctx, clear):
                    continue  # some parameters frozen for this step, on purpose
                reported.add(id(clear))
                ctx.report(
                    self,
                    clear,
                    "gradients are cleared after backward() and before step(): "
                    "the optimizer step sees no gradient",
                    data={"step_line": step_after},
                )


def _clearing_helper_calls(ctx: ModuleContext, loop: ast.AST) -> list[ast.AST]:
    """Calls in the loop of a local helper that only clears gradients (a solver's `def
    reset_grad(self): self.unet.zero_grad()`): each is a clear where it is called."""
    found: list[ast.AST] = []
    for node in walk_scope(loop.body if isinstance(loop, ast.For | ast.While) else []):
        if not isinstance(node, ast.Call) or is_zero_grad(node):
            continue
        helpers = ctx.calls.resolve(node)
        if len(helpers) != 1 or not isinstance(helpers[0], ast.FunctionDef):
            continue
        own = direct_effects(helpers[0].body)
        if own.zero_grad and not own.backward and not own.step and not own.callees:
            found.append(node)
    return found


def _step_functions(ctx: ModuleContext, loop: ast.AST) -> list[ast.FunctionDef]:
    """The local functions the loop calls directly that back-propagate, step and clear in
    their own body with no loop of their own (a DQN's `compute_td_loss(batch_size)` called on
    each frame): their order is the iteration's order."""
    found: list[ast.FunctionDef] = []
    for node in walk_scope(loop.body if isinstance(loop, ast.For | ast.While) else []):
        if not isinstance(node, ast.Call):
            continue
        for helper in ctx.calls.resolve(node):
            if not isinstance(helper, ast.FunctionDef) or helper in found:
                continue
            if any(isinstance(n, ast.For | ast.While) for n in walk_scope(helper.body)):
                continue
            own = direct_effects(helper.body)
            if own.zero_grad and own.backward and own.step:
                found.append(helper)
    return found


def _update_functions(ctx: ModuleContext) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Functions that back-propagate, clear and step in their own body with no loop around
    any of those calls (an RL agent's `train(self)`, run once per step by a loop in another
    file; a soft target update's loop over parameters beside them is no matter): their order
    is each call's order."""
    found: list[ast.FunctionDef | ast.AsyncFunctionDef] = []
    for defs in ctx.loops.functions.values():
        for fn in defs:
            own = direct_effects(fn.body)
            if not (own.zero_grad and own.backward and own.step):
                continue
            if any(
                _looped_in(ctx, node, fn) for node in [*own.zero_grad, *own.backward, *own.step]
            ):
                continue
            found.append(fn)
    return found


def _looped_in(ctx: ModuleContext, node: ast.AST, fn: ast.AST) -> bool:
    for anc in ctx.ancestors(node):
        if anc is fn:
            return False
        if isinstance(anc, ast.For | ast.AsyncFor | ast.While):
            return True
    return False


def _lines_on_its_path(ctx: ModuleContext, clear: ast.AST, calls: list[ast.Call]) -> list[int]:
    """The lines of `calls` that can run in the same iteration as `clear`: not those in the
    other branch of an `if` (Time-Series-Library's `if use_amp: scaler.step(opt) else: ...`
    does not step before a clear in the `else`)."""
    return sorted(c.lineno for c in calls if not _other_branches(ctx, clear, c))


def _other_branches(ctx: ModuleContext, a: ast.AST, b: ast.AST) -> bool:
    """`a` and `b` sit in the two branches of one `if`."""
    above_b = {id(anc) for anc in ctx.ancestors(b)}
    child: ast.AST = a
    for anc in ctx.ancestors(a):
        if isinstance(anc, ast.If) and id(anc) in above_b:
            in_body = any(stmt is child for stmt in anc.body)
            return in_body != _holds(anc.body, b)
        child = anc
    return False


def _holds(block: list[ast.stmt], node: ast.AST) -> bool:
    return any(sub is node for stmt in block for sub in walk_tree(stmt))


def _clears_every_micro_step(
    ctx: ModuleContext, loop: ast.AST, effects: Effects
) -> list[tuple[ast.Call, ast.Call]]:
    """(clear, step) pairs where `opt.zero_grad()` runs unconditionally in the loop body while
    every `opt.step()` there runs only on some iterations (gradient accumulation): under a
    `%` guard, or after an `if ...: continue` that follows the backward (a countdown of
    micro-batches; a skip before the backward drops the whole batch instead); a model's or
    an unnamed `zero_grad()` pairs with the steps when all of them are periodic."""
    steps = [s for s in effects.step if isinstance(s, ast.Call)]
    body = getattr(loop, "body", [])
    found: list[tuple[ast.Call, ast.Call]] = []
    for clear in effects.zero_grad:
        if not isinstance(clear, ast.Call) or next(enclosing_ifs(ctx, clear, loop), None):
            continue
        owner = receiver_name(clear)
        same = [s for s in steps if receiver_name(s) == owner] or (
            [] if _is_optimizer_name(owner) else steps
        )
        if same and all(
            (
                under_modulo_guard(ctx, s, loop)
                and _backward_between_outside_guard(ctx, loop, effects, clear, s)
            )
            or _skipped_after_backward(ctx, body, effects, s, clear)
            or (_accumulate_gated(ctx, s, loop) and receiver_name(s) != owner)
            for s in same
        ):
            found.append((clear, same[0]))
    return found


def _backward_between_outside_guard(
    ctx: ModuleContext, loop: ast.AST, effects: Effects, clear: ast.Call, step: ast.Call
) -> bool:
    """A backward() runs between the clear and the periodic step (in the loop's cyclic order)
    outside the step's `%` guard, so iterations that skip the step accumulate into it. When
    every backward on that path sits in the guard with the step, each step has its own
    backward and nothing is discarded: a WGAN's generator trained every `n_critic` batches
    (`optimizer_G.zero_grad()` on every batch, then `if i % n_critic == 0:` its loss's
    backward and step; the critic's loss reads the generated images detached)."""
    guards = [g for g, _ in enclosing_ifs(ctx, step, loop) if mentions_modulo(g.test)]
    start, end = clear.lineno, step.lineno

    def between(line: int) -> bool:
        return start < line < end if start < end else line > start or line < end

    return any(
        between(b.lineno) and not any(_holds(g.body, b) for g in guards) for b in effects.backward
    )


def _accumulate_gated(ctx: ModuleContext, step: ast.Call, loop: ast.AST) -> bool:
    """The step runs inside `with accelerator.accumulate(model):`, which skips the prepared
    optimizer's `step()` and `zero_grad()` between accumulation boundaries, but not a
    module's own `zero_grad()` (alpaca_farm's PPO loop cleared `self.policy` every micro-batch)."""
    for anc in ctx.ancestors(step):
        if anc is loop:
            return False
        if isinstance(anc, ast.With | ast.AsyncWith) and any(
            isinstance(item.context_expr, ast.Call)
            and isinstance(item.context_expr.func, ast.Attribute)
            and item.context_expr.func.attr == "accumulate"
            for item in anc.items
        ):
            return True
    return False


def _skipped_after_backward(
    ctx: ModuleContext, body: list[ast.stmt], effects: Effects, step: ast.Call, clear: ast.Call
) -> bool:
    """A top-level `if ...: continue` of the loop's body sits between the first backward()
    and this step, and the clear comes before that backward: the iterations the skip
    leaves out only accumulate, and each is cleared first (pytorch-cifar100's 92a3323). A
    clear after the skip runs only with the step."""
    first = min((_position(ctx, b, body) for b in effects.backward), default=-1)
    last = _position(ctx, step, body)
    return 0 <= _position(ctx, clear, body) < first < last and any(
        isinstance(stmt, ast.If) and any(isinstance(s, ast.Continue) for s in stmt.body)
        for stmt in body[first + 1 : last]
    )


def _position(ctx: ModuleContext, node: ast.AST, body: list[ast.stmt]) -> int:
    """The index, in the loop's body, of the top-level statement holding `node`; -1 if none."""
    current: ast.AST | None = node
    while current is not None and current not in body:
        current = ctx.parents.get(current)
    return body.index(current) if current is not None else -1


def _is_optimizer_name(name: str) -> bool:
    """`optimizer`, `opt_g`, `d_optim`: a clear that belongs to one optimizer's steps."""
    return "opt" in name.lower()


def _selected_parameter(ctx: ModuleContext, clear: ast.AST) -> bool:
    """`for name, p in model.named_parameters(): if cond: p.grad = None`: the clear hits
    the parameters an `if` inside the loop over them picks, not every gradient."""
    if not isinstance(clear, ast.Assign):
        return False
    cleared = {
        t.value.id
        for t in clear.targets
        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name)
    }
    selected = False
    for parent in ctx.ancestors(clear):
        if isinstance(parent, ast.If):
            selected = True
        elif isinstance(parent, ast.For | ast.AsyncFor):
            bound = {n.id for n in walk_tree(parent.target) if isinstance(n, ast.Name)}
            if cleared & bound:
                return selected or not _every_parameter(ctx, parent.iter, parent)
        elif isinstance(parent, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            break
    return False


_PARAMETER_LISTS = frozenset({"parameters", "named_parameters"})


def _every_parameter(ctx: ModuleContext, iterable: ast.expr, loop: ast.AST, depth: int = 0) -> bool:
    """`model.parameters()`, `list(model.named_parameters())`, a param group's `["params"]`,
    or a name bound to one of those in the same function: a loop over every parameter, not
    over a list the code chose (`actor_params` returned by a helper)."""
    while isinstance(iterable, ast.Call) and isinstance(iterable.func, ast.Name):
        if iterable.func.id not in ("list", "tuple", "enumerate") or not iterable.args:
            return False
        iterable = iterable.args[0]
    if isinstance(iterable, ast.Call) and isinstance(iterable.func, ast.Attribute):
        return iterable.func.attr in _PARAMETER_LISTS
    if isinstance(iterable, ast.Subscript):
        key = iterable.slice
        return isinstance(key, ast.Constant) and key.value == "params"
    if not isinstance(iterable, ast.Name) or depth > 3:
        return False
    scope = ctx.enclosing_function(loop)
    body = scope.body if scope is not None else ctx.tree.body
    return any(
        isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == iterable.id for t in node.targets)
        and _every_parameter(ctx, node.value, loop, depth + 1)
        for stmt in body
        for node in walk_tree(stmt)
    )
