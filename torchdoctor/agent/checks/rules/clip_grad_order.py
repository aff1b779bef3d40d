"""clip-grad-order: gradients clipped before backward() or after the optimizer step."""

from __future__ import annotations

import ast
import builtins
from typing import Any, ClassVar

from torchdoctor.agent.checks.analysis.project import (
    GRAD_CLIPS,
    Pending,
    ProjectIndex,
    callee_symbol,
    clips_gradients,
    defer,
    project_imports,
    publish,
    star_modules,
    summarise,
)
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.checks.loops import (
    direct_effects,
    enclosing_ifs,
    is_backward_call,
    is_optimizer_step,
    position,
    walk_scope,
)
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_CLIPS = GRAD_CLIPS


class ClipGradOrder(Rule):
    """Detects gradient clipping (`clip_grad_norm_`, `clip_grad_value_`, also through
    `accelerator.clip_grad_norm_`) placed in a training loop, or in a loop-free update
    function (`def learn(self, batch): ... backward() ... step()`), before every `backward()`
    of that body, or after every optimizer `step()` of it (or every manual update of the
    parameters from their gradients: `for p in model.parameters(): p -= lr * p.grad`).

    Why it matters: clipping acts on the gradients present when it runs. Before `backward()`
    it clips the previous step's gradients (usually already zeroed), after `step()` it clips
    gradients that were already applied and are about to be zeroed: in both cases the update
    is never clipped, and the exploding gradients it was meant to tame reach the weights.

    With several optimizers, a clip is judged against the steps of the optimizer built over
    the parameters it clips (an actor's clip after the actor's step, before the critic's),
    and against the last `backward()` before that step (a GAN's generator clipped after the
    discriminator's backward and step, but before its own `loss_gen.backward()`).
    A loop-free function that clips and backpropagates but leaves the step to its caller (a
    multi-task loss weighting's `backward(losses, shared_parameters)`) is judged on a clip
    before its `backward()`.

    A loop-free function that steps the optimizer and clips but never back-propagates (an
    optimizer wrapper's `step()`, PreSumm's; a step-function factory's `optimize_fn` closure,
    score_sde's) is the update half of a step whose caller ran `backward()`: a clip after
    every step it can run with is reported.

    A clip is judged against the `backward()` and steps that can run with it, not those of
    the other branch of an `if` (`if fp16: ... else: clip; loss.backward()` clips first).

    A call of a clipping helper (a function of the file, or of another file of the project,
    that clips or clamps gradients and neither back-propagates nor steps: the SSD
    tutorial's `clip_gradient(optimizer, grad_clip)` clamping each `param.grad.data`) is
    judged as the clip it makes.

    Not reported: clipping and the steps in different branches (`if use_amp: ... else: ...`,
    one of each before the other); loops whose backward or step happens in a called function
    (the order is not visible in one body); clipping inside a function the loop calls unless
    that function backpropagates and steps itself.

    Example:
        loss.backward()
        optimizer.step()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)

    Fix: clip between `backward()` (and `scaler.unscale_(optimizer)` under AMP) and
    `optimizer.step()`.
    """

    id = "clip-grad-order"
    point = 4
    severity = Severity.HIGH
    title = "Gradient clipping outside backward() -> step()"
    items: ClassVar[tuple[str, ...]] = ("4.3",)
    triggers = Triggers(("clip_grad", "grad_clip"))

    def applies(self, ctx: ModuleContext) -> bool:
        return "clip_grad" in ctx.source or "grad_clip" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        if any(f.clips_grad for f in summarise(ctx).functions.values()):
            publish(ctx)  # its clipping helpers, for the files whose loops call them
        bodies = [loop.body for loop in ctx.loops.training_loops if loop.kind == "loop"]
        bodies += _update_functions(ctx)
        for body in _step_functions(ctx):
            self._check_step_function(ctx, body)
        for body in bodies:
            calls = [n for n in walk_scope(body) if isinstance(n, ast.Call)]
            clips = [c for c in calls if _is_clip(c)]
            backward_calls = [c for c in calls if is_backward_call(c)]
            step_calls = [c for c in calls if is_optimizer_step(c) and not _is_clip(c)]
            if not backward_calls:
                continue
            self._check_helpers(ctx, calls, backward_calls, step_calls, body)
            updates = direct_effects(body).update
            for clip in clips:
                # the backward and steps that can run with this clip: not those of the other
                # branch of an `if fp16: ... else: ...` (JointBERT-style trainers)
                backwards = [c.lineno for c in backward_calls if not _exclusive(ctx, clip, c, body)]
                if not backwards:
                    continue
                mine = [c for c in step_calls if not _exclusive(ctx, clip, c, body)]
                own = _steps_of(ctx, clip, mine)
                steps = [c.lineno for c in own]
                steps += [position(u)[0] for u in _updates_of(ctx, clip, updates)]
                if len(own) < len(mine):
                    # another optimizer steps here too (a GAN's discriminator): the backward
                    # that counts is the last one before this model's own step
                    feeding = [b for b in backwards if b < min(c.lineno for c in own)]
                    backwards = [max(feeding)] if feeding else backwards
                if clip.lineno < min(backwards):
                    self._report(ctx, clip, "before backward()", backwards, "after")
                elif steps and clip.lineno > max(steps):
                    self._report(ctx, clip, "after optimizer.step()", steps, "before")

    def _check_step_function(self, ctx: ModuleContext, body: list[ast.stmt]) -> None:
        """A loop-free function that steps the optimizer and clips, with no `backward()` of
        its own (an optimizer wrapper's `step()`, a step-function factory's `optimize_fn`):
        its caller back-propagates before calling it, so a clip after every step it can run
        with clips gradients that were already applied."""
        calls = [n for n in walk_scope(body) if isinstance(n, ast.Call)]
        steps = [c for c in calls if is_optimizer_step(c) and not _is_clip(c)]
        for clip in (c for c in calls if _is_clip(c)):
            mine = _steps_of(ctx, clip, [c for c in steps if not _exclusive(ctx, clip, c, body)])
            if mine and clip.lineno > max(c.lineno for c in mine):
                lines = [c.lineno for c in mine]
                self._report(ctx, clip, "after optimizer.step()", lines, "before")

    def _check_helpers(
        self,
        ctx: ModuleContext,
        calls: list[ast.Call],
        backward_calls: list[ast.Call],
        step_calls: list[ast.Call],
        body: list[ast.stmt],
    ) -> None:
        """Calls of clipping helpers placed before every backward or after every step: a
        helper of this file is read here, one of another file is confirmed by the project
        pass."""
        for call in calls:
            if not isinstance(call.func, ast.Name) or _is_clip(call):
                continue
            local = ctx.loops.functions.get(call.func.id)
            symbols = [] if local else _helper_symbols(ctx, call.func)
            if local and not all(clips_gradients(fn) for fn in local):
                continue
            if not local and not symbols:
                continue
            backwards = [c.lineno for c in backward_calls if not _exclusive(ctx, call, c, body)]
            steps = [c.lineno for c in step_calls if not _exclusive(ctx, call, c, body)]
            if not backwards:
                continue
            if call.lineno < min(backwards):
                where, anchors, side = "before backward()", backwards, "after"
            elif steps and call.lineno > max(steps):
                where, anchors, side = "after optimizer.step()", steps, "before"
            else:
                continue
            if local:
                self._report(ctx, call, where, anchors, side)
                continue
            found = self._finding(ctx, call, where, anchors, side)
            for symbol in symbols if found is not None else []:
                assert found is not None
                defer(ctx, self.id, Pending(symbol=symbol, needs="clips-gradients", finding=found))

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        """A loop's call of another file's function, reported when that function clips."""
        return ProjectIndex.from_facts(facts).confirmed(facts, cls.id)

    def _finding(
        self, ctx: ModuleContext, clip: ast.Call, where: str, anchors: list[int], side: str
    ) -> RawFinding | None:
        return ctx.finding(self, clip, _message(where), data=_move(ctx, clip, anchors, side))

    def _report(
        self, ctx: ModuleContext, clip: ast.Call, where: str, anchors: list[int], side: str
    ) -> None:
        ctx.report(self, clip, _message(where), data=_move(ctx, clip, anchors, side))


def _message(where: str) -> str:
    return f"gradients are clipped {where}: the update applied by the optimizer is never clipped"


def _move(ctx: ModuleContext, clip: ast.Call, anchors: list[int], side: str) -> dict[str, Any]:
    """Where the codemod moves the clip's statement, when it can."""
    anchor_line = min(anchors) if side == "after" else max(anchors)
    statement = _statement(ctx, clip)
    anchor = _statement_at(ctx, statement, anchor_line)
    if statement is not None and anchor is not None and _movable(ctx, statement, anchor):
        return {"move": side, "anchor_line": anchor.lineno}
    return {}


def _helper_symbols(ctx: ModuleContext, func: ast.Name) -> list[str]:
    """What a call of a name this file does not define may run, when it may be a function
    of the project: its import from a project file, or the name in each project module a
    star import brings (`from utils import *`)."""
    if func.id in project_imports(ctx):
        symbol = callee_symbol(ctx, func)
        return [symbol] if symbol is not None else []
    if func.id in ctx.imports.aliases or hasattr(builtins, func.id) or ctx.flow.definitions(func):
        return []
    return [f"{module}.{func.id}" for module in star_modules(ctx)]


def _exclusive(ctx: ModuleContext, a: ast.AST, b: ast.AST, body: list[ast.stmt]) -> bool:
    """`a` and `b` sit in different branches of one `if` of the loop body: never both run."""
    stop = ctx.parents.get(body[0]) if body else None
    parts = {id(branch): part for branch, part in enclosing_ifs(ctx, a, stop)}
    return any(
        id(branch) in parts
        and parts[id(branch)] != part
        and "test" not in (part, parts[id(branch)])
        for branch, part in enclosing_ifs(ctx, b, stop)
    )


def _steps_of(ctx: ModuleContext, clip: ast.Call, steps: list[ast.Call]) -> list[ast.Call]:
    """The steps of the optimizers built over the model whose parameters `clip` clips
    (`clip_grad_norm_(self.actor.parameters())` and `actor_optimizer = Adam(self.actor
    .parameters())`), when they can be told apart; else every step of the body."""
    clipped = _parameters_owner(clip.args[0]) if clip.args else None
    if clipped is None:
        return steps
    mine = [
        step
        for step in steps
        if isinstance(step.func, ast.Attribute)
        and any(
            cons.args and _parameters_owner(cons.args[0]) == clipped
            for cons in ctx.flow.constructors(step.func.value)
        )
    ]
    return mine or steps


def _updates_of(ctx: ModuleContext, clip: ast.Call, updates: list[ast.AST]) -> list[ast.AST]:
    """The manual updates (`for p in model.parameters(): p -= lr * p.grad`) of the parameters
    `clip` clips: all of them unless both name their model and the models differ."""
    clipped = _parameters_owner(clip.args[0]) if clip.args else None
    if clipped is None:
        return updates
    mine = []
    for update in updates:
        loop = next((a for a in ctx.ancestors(update) if isinstance(a, ast.For)), None)
        owner = _parameters_owner(loop.iter) if loop is not None else None
        if owner is None or owner == clipped:
            mine.append(update)
    return mine


def _parameters_owner(expr: ast.expr) -> str | None:
    """`self.actor.parameters()` -> 'self.actor'."""
    if (
        isinstance(expr, ast.Call)
        and isinstance(expr.func, ast.Attribute)
        and expr.func.attr == "parameters"
    ):
        return ast.unparse(expr.func.value)
    return None


def _update_functions(ctx: ModuleContext) -> list[list[ast.stmt]]:
    """Bodies of functions that clip and backpropagate (and usually step) outside any loop of
    their own: one update per call (a training loop's body, seen by the loop that calls it
    only by name). A loop that holds neither is part of the forward (a char-RNN's unroll over
    its chunk, summing the loss of each character). One that leaves the step to its caller
    (a multi-task weighting's `backward(losses, shared_parameters)`) is judged on its clip
    before `backward()` only."""
    bodies = []
    for defs in ctx.loops.functions.values():
        for fn in defs:
            calls = [n for n in walk_scope(fn.body) if isinstance(n, ast.Call)]
            clips = [c for c in calls if _is_clip(c)]
            backwards = [c for c in calls if is_backward_call(c)]
            if not clips or not backwards:
                continue
            if not any(_in_own_loop(ctx, c, fn) for c in (*clips, *backwards)):
                bodies.append(fn.body)
    return bodies


def _step_functions(ctx: ModuleContext) -> list[list[ast.stmt]]:
    """Bodies of functions that clip and step an optimizer, with no `backward()` and no loop
    of their own around either: the update half of a step the caller back-propagated for
    (PreSumm's `Optimizer.step`, score_sde's `optimize_fn` closure)."""
    bodies = []
    for defs in ctx.loops.functions.values():
        for fn in defs:
            calls = [n for n in walk_scope(fn.body) if isinstance(n, ast.Call)]
            clips = [c for c in calls if _is_clip(c)]
            steps = [c for c in calls if is_optimizer_step(c) and not _is_clip(c)]
            if not clips or not steps or any(is_backward_call(c) for c in calls):
                continue
            if not any(_in_own_loop(ctx, c, fn) for c in (*clips, *steps)):
                bodies.append(fn.body)
    return bodies


def _in_own_loop(ctx: ModuleContext, node: ast.AST, fn: ast.AST) -> bool:
    """`node` runs in a loop of the function `fn` (not one around `fn`)."""
    for ancestor in ctx.ancestors(node):
        if ancestor is fn:
            return False
        if isinstance(ancestor, ast.For | ast.AsyncFor | ast.While):
            return True
    return False


def _is_clip(call: ast.Call) -> bool:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name in _CLIPS


def _statement(ctx: ModuleContext, node: ast.AST) -> ast.stmt | None:
    for anc in [node, *ctx.ancestors(node)]:
        if isinstance(anc, ast.stmt):
            return anc
    return None


def _statement_at(ctx: ModuleContext, sibling: ast.stmt | None, line: int) -> ast.stmt | None:
    """The statement of `sibling`'s block that holds `line`, if they share the block."""
    if sibling is None:
        return None
    parent = ctx.parents.get(sibling)
    for name in ("body", "orelse", "finalbody"):
        block = getattr(parent, name, None)
        if isinstance(block, list) and sibling in block:
            return next((s for s in block if s.lineno <= line <= (s.end_lineno or s.lineno)), None)
    return None


def _movable(ctx: ModuleContext, clip: ast.stmt, anchor: ast.stmt) -> bool:
    """A simple clip statement (on one line or continued over several: Conv-TasNet's
    `clip_grad_norm_(params,\n max_norm)`) whose result no statement between it and
    `anchor` reads."""
    if not isinstance(clip, ast.Expr | ast.Assign):
        return False
    if isinstance(anchor, ast.If | ast.For | ast.While | ast.With | ast.Try):
        return False
    bound = {t.id for t in getattr(clip, "targets", []) if isinstance(t, ast.Name)}
    if clip.lineno < anchor.lineno:
        first, last = clip.end_lineno or clip.lineno, anchor.lineno
    else:
        first, last = anchor.lineno, clip.lineno
    return not any(
        isinstance(n, ast.Name) and n.id in bound and first < n.lineno <= last
        for n in ctx.nodes_by_type().get(ast.Name, ())
    )
