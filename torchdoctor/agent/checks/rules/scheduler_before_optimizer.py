"""scheduler-before-optimizer: the LR scheduler steps before the optimizer."""

from __future__ import annotations

import ast
from typing import Any, ClassVar

from torchdoctor.agent.checks.analysis.project import (
    Pending,
    ProjectIndex,
    callee_symbol,
    defer,
    is_package_init,
    passed_for_parameter,
    publish,
)
from torchdoctor.agent.checks.analysis.schedules import hand_written_schedule
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.checks.loops import (
    is_optimizer_step,
    is_scheduler_receiver,
    local_callee,
    method_name,
    nodes_of,
    receiver_name,
    walk_scope,
)
from torchdoctor.agent.models import Severity


def is_scheduler_step(ctx: ModuleContext, call: ast.Call) -> bool:
    if method_name(call) != "step" or not isinstance(call.func, ast.Attribute):
        return False
    if is_scheduler_receiver(receiver_name(call)):
        return True
    built = ctx.flow.constructed_as(call.func.value) or ""
    return built.startswith("torch.optim.lr_scheduler.")


class SchedulerBeforeOptimizer(Rule):
    """Detects `scheduler.step()` placed before `optimizer.step()` within a training iteration,
    or at the top of the epoch loop before the batches are trained, also when the optimizer
    steps inside a function the loop calls (`train(args, model, loader, optimizer)`, defined
    in the same file or imported from another one).

    Why it matters: since PyTorch 1.1 the scheduler must step after the optimizer; stepping it
    first skips the first value of the learning-rate schedule (warm-up starts late, a step
    decay comes one epoch early) and PyTorch only warns once.

    Example:
        for epoch in range(epochs):
            scheduler.step()
            for x, y in loader:
                ...
                optimizer.step()

    Not reported: a scheduler step followed by `continue` (a resumed run fast-forwarding the
    schedule over the epochs it skips), a scheduler step after the optimizer step or after
    the call that trains (another file's function that steps the optimizer, called before the
    scheduler on the same path), nor before a call in another arm of the same `if`/`elif` chain; a
    step given the epoch or a metric (`scheduler.step(epoch)` sets that epoch's rate,
    `plateau.step(val_loss)` follows the metric: nothing is skipped); a loop whose optimizer
    step cannot be seen (a method of an object built elsewhere, a function of an installed
    library); a schedule whose `step()` returns the value it set (`new_lr =
    scheduler.step()` anywhere in the module: hand-written, it sets this step's value itself,
    torch's returns None); a hand-written schedule class (its own `step` writes
    `group["lr"]` or `group["weight_decay"]` and it derives from no torch scheduler: I-JEPA's
    `WarmupCosineSchedule`, a Noam schedule), in this file or another file of the project,
    even when it reaches the loop through a tuple a local function returns and a parameter.
    A subclass of a torch scheduler keeps torch's contract and is reported.

    Fix: call `scheduler.step()` after `optimizer.step()` (per batch) or after the inner
    batch loop (per epoch).
    """

    id = "scheduler-before-optimizer"
    point = 4
    severity = Severity.MEDIUM
    title = "LR scheduler stepped before the optimizer"
    items: ClassVar[tuple[str, ...]] = ("4.3",)

    def applies(self, ctx: ModuleContext) -> bool:
        return "sched" in ctx.source.lower() and ".step(" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        if ".step(" in ctx.source or "def step" in ctx.source or is_package_init(ctx):
            publish(ctx)  # `def step`: a hand-written schedule other files step
        if not self.applies(ctx):
            return
        reported: set[int] = set()
        custom = _returning_schedules(ctx)
        for loop in nodes_of(ctx, ast.For, ast.While, ast.AsyncFor):
            assert isinstance(loop, ast.For | ast.While | ast.AsyncFor)
            schedulers = [
                call
                for call in _steps_in(ctx, loop.body)
                if _innermost_loop(ctx, call) is loop
                and call.lineno not in reported
                and not _given_its_position(call)
                and receiver_name(call) not in custom
                and not _skips_the_iteration(ctx, call, loop)
                and not _built_by_hand(ctx, call)
            ]
            if not schedulers:
                continue
            local, imported = _optimizer_steps(ctx, loop.body)
            first = min((c.lineno for c in local), default=None)
            for call in schedulers:
                if first is not None and call.lineno < first:
                    reported.add(call.lineno)
                    self._report(ctx, call, first)
                elif first is None:
                    on_path = [(c, s) for c, s in imported if not _exclusive(ctx, c, call)]
                    earlier = [s for c, s in on_path if c.lineno < call.lineno]
                    later = [(c, s) for c, s in on_path if c.lineno > call.lineno]
                    for site, symbol in later[:_MAX_CANDIDATES]:
                        found = ctx.finding(
                            self,
                            call,
                            f"{_MESSAGE} (`{symbol}`, called on line "
                            f"{site.lineno}, steps the optimizer)",
                        )
                        if found is not None:
                            reported.add(call.lineno)
                            pending = Pending(
                                symbol=symbol,
                                needs="steps-optimizer",
                                finding=found,
                                unless=earlier,
                            )
                            defer(ctx, self.id, pending)
        for fn in nodes_of(ctx, ast.FunctionDef, ast.AsyncFunctionDef):
            assert isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
            for call, first in _straight_line_order(ctx, fn, custom):
                if call.lineno not in reported:
                    reported.add(call.lineno)
                    self._report(ctx, call, first)

    def _report(self, ctx: ModuleContext, call: ast.Call, first: int) -> None:
        """Reported at once, or, where the schedule is another file's class, once the project
        pass finds that class is not a hand-written schedule."""
        found = ctx.finding(self, call, _MESSAGE, data={"optimizer_step_line": first})
        if found is None:
            return
        imported = _imported_schedule_class(ctx, call)
        if imported is None:
            ctx.findings.append(found)
        else:
            defer(
                ctx,
                self.id,
                Pending(symbol=imported, needs="not-a-hand-written-schedule", finding=found),
            )

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        return ProjectIndex.from_facts(facts).confirmed(facts, cls.id)


def _skips_the_iteration(ctx: ModuleContext, call: ast.Call, loop: ast.AST) -> bool:
    """The step is followed by `continue` in its block (`if epoch <= skip_epochs:
    scheduler.step(); continue`): a resumed run fast-forwarding the schedule over epochs it
    does not train, where no optimizer step comes after it."""
    child: ast.AST = call
    for parent in ctx.ancestors(call):
        if isinstance(child, ast.stmt):
            for field in ("body", "orelse", "finalbody"):
                block = getattr(parent, field, None)
                if isinstance(block, list) and any(s is child for s in block):
                    later = block[block.index(child) + 1 :]
                    if any(isinstance(s, ast.Continue) for s in later):
                        return True
        if parent is loop:
            return False
        child = parent
    return False


_MAX_CANDIDATES = 4
_MESSAGE = (
    "the LR scheduler steps before optimizer.step(): the first value of the schedule is skipped"
)


def _steps_in(ctx: ModuleContext, body: list[ast.stmt]) -> list[ast.Call]:
    return [n for n in walk_scope(body) if isinstance(n, ast.Call) and is_scheduler_step(ctx, n)]


def _straight_line_order(
    ctx: ModuleContext, fn: ast.FunctionDef | ast.AsyncFunctionDef, custom: set[str]
) -> list[tuple[ast.Call, int]]:
    """Scheduler steps of `fn` outside any loop of `fn`, each with the line of the optimizer
    step that follows it on the same path, when no optimizer step comes before it: whoever
    calls `fn` once per iteration (an `OptimizerScheduler.step()` wrapper, a `train_epoch`
    that begins with the scheduler) steps the schedule first every time."""
    local, _ = _optimizer_steps(ctx, fn.body)
    found: list[tuple[ast.Call, int]] = []
    for call in _steps_in(ctx, fn.body):
        if _loop_within(ctx, call, fn) or _given_its_position(call):
            continue
        if receiver_name(call) in custom or _built_by_hand(ctx, call):
            continue
        if any(step.lineno < call.lineno for step in local):
            continue  # stepped after an optimizer step: nothing skipped
        later = [s.lineno for s in local if s.lineno > call.lineno and not _exclusive(ctx, s, call)]
        if later:
            found.append((call, min(later)))
    return found


def _loop_within(ctx: ModuleContext, node: ast.AST, fn: ast.AST) -> bool:
    """`node` sits in a loop of `fn` (the loop pass above judges it)."""
    for anc in ctx.ancestors(node):
        if anc is fn:
            return False
        if isinstance(anc, ast.For | ast.While | ast.AsyncFor):
            return True
    return False


def _returning_schedules(ctx: ModuleContext) -> set[str]:
    """Schedulers whose `.step()` result the module uses (`new_lr = scheduler.step()`): a
    hand-written schedule that sets this step's value itself and returns it (I-JEPA's
    `WarmupCosineSchedule`), stepped first on purpose; torch's `step()` returns None."""
    return {
        receiver_name(call)
        for call in ctx.flow.calls_named(("step",))
        if receiver_name(call) and not isinstance(ctx.parents.get(call), ast.Expr)
    }


def _built_by_hand(ctx: ModuleContext, call: ast.Call) -> bool:
    """The schedule stepped is a class of this module that sets the optimizer's values itself
    (`schedules.hand_written_schedule`), not a torch scheduler: stepped first by design."""
    classes = ctx.flow.classes
    return any(
        isinstance(built.func, ast.Name)
        and built.func.id in classes
        and hand_written_schedule(ctx, classes[built.func.id])
        for built in _constructions(ctx, call)
    )


def _constructions(ctx: ModuleContext, call: ast.Call) -> list[ast.Call]:
    """The calls that build the stepped schedule, through the callers of this module that
    pass it for a parameter (`run_one_epoch(..., scheduler, ...)`)."""
    assert isinstance(call.func, ast.Attribute)
    receiver = call.func.value
    found: list[ast.Call] = []
    for value in [receiver, *passed_for_parameter(ctx, receiver)]:
        found += ctx.flow.constructors(value)
        if isinstance(value, ast.Name):  # `opt, scheduler = init_opt(...)`: its 2nd item
            for element in ctx.flow.unpacked_elements(value):
                found += ctx.flow.constructors(element)
    return found


def _imported_schedule_class(ctx: ModuleContext, call: ast.Call) -> str | None:
    """The class of another file the stepped schedule is built from (`WarmupCosineSchedule(
    optimizer, ...)` imported from `src.utils.schedulers`): the project pass asks whether it
    is a hand-written schedule. None when it is built otherwise, or from several classes."""
    found: set[str] = set()
    for built in _constructions(ctx, call):
        if ctx.calls.resolve(built):
            continue  # a local function (`init_opt(...)`): what it builds is listed too
        symbol = callee_symbol(ctx, built.func)
        if symbol is None or not symbol.rpartition(".")[2][:1].isupper():
            return None  # a factory (`get_cosine_schedule_with_warmup`) or a local build
        if symbol.startswith("torch."):
            return None  # `MultiStepLR`: torch's own
        found.add(symbol)
    return found.pop() if len(found) == 1 else None


def _given_its_position(call: ast.Call) -> bool:
    """`scheduler.step(epoch)` (the pre-1.1 idiom) sets the closed-form rate of the epoch it
    is given, and `plateau.step(val_loss)` is driven by a metric: neither advances a schedule
    by one, so stepping before the optimizer skips no value."""
    return bool(call.args) or any(k.arg in ("epoch", "metrics") for k in call.keywords)


def _exclusive(ctx: ModuleContext, a: ast.AST, b: ast.AST) -> bool:
    """`a` and `b` sit in different arms of one `if`/`elif` chain: one iteration runs at
    most one of them (a warm-up arm's training call and the joint arm's scheduler)."""
    sides: dict[int, bool] = {}
    child: ast.AST = a
    for anc in ctx.ancestors(a):
        if isinstance(anc, ast.If):
            sides[id(anc)] = child in anc.body
        child = anc
    child = b
    for anc in ctx.ancestors(b):
        if isinstance(anc, ast.If) and id(anc) in sides and sides[id(anc)] != (child in anc.body):
            return True
        child = anc
    return False


def _innermost_loop(ctx: ModuleContext, node: ast.AST) -> ast.AST | None:
    for anc in ctx.ancestors(node):
        if isinstance(anc, ast.For | ast.While | ast.AsyncFor):
            return anc
    return None


def _optimizer_steps(
    ctx: ModuleContext, body: list[ast.stmt]
) -> tuple[list[ast.Call], list[tuple[ast.Call, str]]]:
    """Calls in `body` that step an optimizer: directly, through a local function (the call
    graph, transitively), or possibly through a function imported from another file."""
    effects = ctx.loops.function_effects
    local: list[ast.Call] = []
    imported: list[tuple[ast.Call, str]] = []
    for node in walk_scope(body):
        if not isinstance(node, ast.Call) or is_scheduler_step(ctx, node):
            continue  # a schedule's own `step` (a local subclass's override) steps no optimizer
        if is_optimizer_step(node):
            local.append(node)
            continue
        names = {fn.name for fn in ctx.calls.resolve(node)} or {local_callee(node)}
        if any((eff := effects.get(name)) is not None and eff.step for name in names):
            local.append(node)
        elif (symbol := callee_symbol(ctx, node.func)) is not None:
            imported.append((node, symbol))
    return local, imported
