"""epoch-scheduler-per-batch: a schedule sized in epochs stepped once per batch."""

from __future__ import annotations

import ast
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from torchdoctor.agent.checks.analysis.project import parameter_of, project_function_calls
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.checks.loops import enclosing_ifs, is_optimizer_step, walk_scope, walk_tree
from torchdoctor.agent.checks.rules.scheduler_before_optimizer import is_scheduler_step
from torchdoctor.agent.models import Severity

# Schedulers whose period is a count of `step()` calls that scripts almost always give in
# epochs, and the argument that holds that count (its keyword and position after the
# optimizer).
_PERIODS: dict[str, tuple[str, int]] = {
    "torch.optim.lr_scheduler.StepLR": ("step_size", 1),
    "torch.optim.lr_scheduler.MultiStepLR": ("milestones", 1),
    "torch.optim.lr_scheduler.ExponentialLR": ("gamma", 1),
    "torch.optim.lr_scheduler.CosineAnnealingLR": ("T_max", 1),
    "torch.optim.lr_scheduler.CosineAnnealingWarmRestarts": ("T_0", 1),
}
# A literal period this small is an epoch count: a schedule written in batches names
# thousands of steps (or a computed `len(loader) * epochs`).
_MAX_EPOCHS = 1000
# A per-step exponential decay keeps gamma very close to 1; 0.95 per batch is gone in an epoch.
_MIN_PER_STEP_GAMMA = 0.999
_BATCHES = ("loader", "batch", "iter")
_GATE = ("StepLR", "ExponentialLR", "CosineAnnealing")
_PASSES = "epoch-scheduler-per-batch:passes"
_STEPS = "epoch-scheduler-per-batch:steps"


class _Fact(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SchedulerPass(_Fact):
    """A call into another file's function with an epoch-sized scheduler for a parameter."""

    callee: str
    keyword: str | None = None
    position: int | None = None
    period: str


class ParameterStep(_Fact):
    """A per-batch `step()` of a scheduler this function is given: a finding when a caller
    in another file passes an epoch-sized one."""

    function: str
    parameter: str
    position: int | None = None
    finding: RawFinding


class EpochSchedulerPerBatch(Rule):
    """Detects `scheduler.step()` of a `StepLR`, `MultiStepLR`, `ExponentialLR` or
    `CosineAnnealingLR` (or warm restarts) whose period is written in epochs (a literal
    `step_size`/milestones/`T_max` under 1,000, an argument named `*epoch*`, a `gamma` below
    0.999) called inside the loop over a data loader's batches, outside a guard that runs it
    once in a while.

    Why it matters: these schedulers count `step()` calls. Stepped per batch, a decay meant
    for epoch 30 happens at batch 30, and the learning rate collapses within the first epoch:
    training stalls without an error.

    Example:
        scheduler = StepLR(optimizer, step_size=30, gamma=0.1)
        for epoch in range(epochs):
            for x, y in train_loader:
                ...
                optimizer.step()
                scheduler.step()

    The scheduler may arrive as a parameter: the callers in the file, or in the project's
    other files, that pass it say what it is. A step under the guard that also runs
    `optimizer.step()` (gradient accumulation) still runs once per update, not per epoch.

    Not reported: a period computed from the loader or given in steps (`len(loader) * 30`,
    `args.decay_steps`), an epoch-level step after the batch loop, a step under
    `if i % n == 0:`, schedulers meant to step per batch (`OneCycleLR`, `CyclicLR`,
    `LambdaLR`), and loops over a range (a full-batch script's loop is its epoch loop).

    Fix: call `scheduler.step()` once per epoch, after the loop over the batches (or give
    the period in batches: `step_size=30 * len(train_loader)`).
    """

    id = "epoch-scheduler-per-batch"
    point = 4
    severity = Severity.HIGH
    title = "Epoch-level LR scheduler stepped every batch"
    items: ClassVar[tuple[str, ...]] = ("4.3",)

    def applies(self, ctx: ModuleContext) -> bool:
        text = ctx.source
        # A scheduler handed in by another file is named, not built, here.
        named = any(name in text for name in _GATE) or "sched" in text.lower()
        return ".step(" in text and named

    def finish(self, ctx: ModuleContext) -> None:
        if any(name in ctx.source for name in _GATE):
            _publish_passes(ctx)
        if not self.applies(ctx):
            return
        for node in ctx.flow.calls_named(("step",)):
            if not is_scheduler_step(ctx, node):
                continue
            if node.args or node.keywords:
                continue  # `step(epoch)` / `step(metric)`: not a count of calls
            assert isinstance(node.func, ast.Attribute)
            loop = _batch_loop(ctx, node)
            if loop is None:
                continue
            receiver = node.func.value
            period = _epoch_period(ctx, receiver) or _period_passed_here(ctx, receiver)
            if period is not None:
                ctx.report(
                    self, node, _message(receiver, period, loop), data={"loop_line": loop.lineno}
                )
                continue
            where = parameter_of(ctx, receiver)
            found = ctx.finding(self, node, _message(receiver, "{period}", loop))
            if where is not None and found is not None:
                function, parameter, position = where
                step = ParameterStep(
                    function=function, parameter=parameter, position=position, finding=found
                )
                ctx.facts.setdefault(_STEPS, []).append(step.model_dump())

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        passes = [
            SchedulerPass.model_validate(p) for f in facts.values() for p in f.get(_PASSES, [])
        ]
        found: list[RawFinding] = []
        for module_facts in facts.values():
            for raw in module_facts.get(_STEPS, []):
                step = ParameterStep.model_validate(raw)
                period = next((p.period for p in passes if _passes_to(p, step)), None)
                if period is not None:
                    message = step.finding.message.replace("{period}", period)
                    found.append(step.finding.model_copy(update={"message": message}))
        return found


def _message(receiver: ast.expr, period: str, loop: ast.For) -> str:
    return (
        f"`{ast.unparse(receiver)}` ({period}) counts epochs but steps once per "
        f"batch of `{ast.unparse(loop.iter)}`: the schedule runs len(loader) times too "
        "fast; step it after the batch loop"
    )


def _passes_to(passed: SchedulerPass, step: ParameterStep) -> bool:
    """Whether a call another file makes (`utils.train_utils.train`, imported as such)
    reaches the parameter `step` names, matching qualified names by their common tail."""
    callee, function = passed.callee, step.function
    same = callee == function or callee.endswith("." + function) or function.endswith("." + callee)
    if not same:
        return False
    if passed.keyword is not None:
        return passed.keyword == step.parameter
    return passed.position is not None and passed.position == step.position


def _publish_passes(ctx: ModuleContext) -> None:
    """Record the calls into other files' functions given an epoch-sized scheduler."""
    passes: list[dict[str, Any]] = []
    for callee, call in project_function_calls(ctx):
        arguments: list[tuple[str | None, int | None, ast.expr]]
        arguments = [(None, i, a) for i, a in enumerate(call.args)]
        arguments += [(k.arg, None, k.value) for k in call.keywords if k.arg]
        for keyword, position, value in arguments:
            if isinstance(value, ast.Starred):
                break
            period = (
                _epoch_period(ctx, value) if isinstance(value, ast.Name | ast.Attribute) else None
            )
            if period is not None:
                found = SchedulerPass(
                    callee=callee, keyword=keyword, position=position, period=period
                )
                passes.append(found.model_dump())
    if passes:
        ctx.facts[_PASSES] = passes


def _period_passed_here(ctx: ModuleContext, receiver: ast.expr) -> str | None:
    """The epoch period of the scheduler this file's callers pass for the parameter
    `receiver` (`def train_gan(..., scheduler)` called as `train_gan(scheduler=self.sched)`)."""
    fn = ctx.enclosing_function(receiver) if isinstance(receiver, ast.Name) else None
    if fn is None or not isinstance(receiver, ast.Name):
        return None
    if any(v is not receiver for v in ctx.flow.definitions(receiver)):
        return None  # rebound in the function: its own bindings say what it holds
    for site in ctx.calls.call_sites(fn):
        passed = ctx.calls.bind(site, fn).get(receiver.id)
        period = _epoch_period(ctx, passed) if passed is not None else None
        if period is not None:
            return period
    return None


def _epoch_period(ctx: ModuleContext, receiver: ast.expr) -> str | None:
    """'StepLR(step_size=30)' when the scheduler `receiver` holds has a period in epochs."""
    for call in ctx.flow.constructors(receiver):
        qual = ctx.flow.qualname_of(call)
        if qual not in _PERIODS:
            continue
        keyword, index = _PERIODS[qual]
        value = next((k.value for k in call.keywords if k.arg == keyword), None)
        if value is None and len(call.args) > index:
            value = call.args[index]
        if value is not None and _in_epochs(value, keyword):
            return f"{qual.rpartition('.')[2]}({keyword}={ast.unparse(value)})"
    return None


def _in_epochs(value: ast.expr, keyword: str) -> bool:
    names = [
        n.id if isinstance(n, ast.Name) else n.attr
        for n in walk_tree(value)
        if isinstance(n, ast.Name | ast.Attribute)
    ]
    if any("epoch" in name.lower() for name in names):
        return not any(b in name.lower() for name in names for b in (*_BATCHES, "step", "len"))
    if names:
        return False  # computed or configured: its unit is unknown
    numbers = [
        n.value
        for n in walk_tree(value)
        if isinstance(n, ast.Constant) and isinstance(n.value, int | float)
    ]
    if not numbers:
        return False
    if keyword == "gamma":
        return all(0 < x < _MIN_PER_STEP_GAMMA for x in numbers)
    return max(numbers) < _MAX_EPOCHS


def _batch_loop(ctx: ModuleContext, call: ast.Call) -> ast.For | None:
    """The innermost loop around `call` when it iterates over batches (not a `range`, not
    an epoch counter) and `call` runs on every iteration of it."""
    for anc in ctx.ancestors(call):
        if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            return None
        if isinstance(anc, ast.While | ast.AsyncFor):
            return None
        if isinstance(anc, ast.For):
            if any(not _gates_update(b, part) for b, part in enclosing_ifs(ctx, call, anc)):
                return None  # once in a while (`if i % n == 0`, `if last batch`)
            return anc if _over_batches(ctx, anc) else None
    return None


def _gates_update(branch: ast.If, part: str) -> bool:
    """Whether the part of the `if` the scheduler is on also runs the optimizer's step (the
    accumulation guard, a config switch): stepped there it still steps once per update."""
    body = branch.orelse if part == "orelse" else branch.body if part == "body" else []
    return any(isinstance(n, ast.Call) and is_optimizer_step(n) for n in walk_scope(body))


def _over_batches(ctx: ModuleContext, loop: ast.For) -> bool:
    target = ast.unparse(loop.target).lower()
    if "epoch" in target:
        return False
    source = loop.iter
    if isinstance(source, ast.Name):  # `bar = tqdm(enumerate(loader)); for i, b in bar:`
        bound = ctx.flow.definitions(source)
        source = bound[0] if len(bound) == 1 else source
    # `enumerate(tqdm(loader, desc=f"Epoch {epoch}"))`: the wrapped iterable, not its labels
    while isinstance(source, ast.Call) and isinstance(source.func, ast.Name):
        if source.func.id == "range":
            return False
        if source.func.id not in ("enumerate", "tqdm", "zip") or not source.args:
            break
        source = source.args[0]
    text = ast.unparse(source).lower()
    return "epoch" not in text and any(b in text for b in _BATCHES)
