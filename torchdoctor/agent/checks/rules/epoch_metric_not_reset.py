"""epoch-metric-not-reset: a per-epoch figure accumulated since the first epoch."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.analysis.batch_outputs import in_loader_loop
from torchdoctor.agent.checks.analysis.defuse import identifier
from torchdoctor.agent.checks.analysis.vocabulary import HELD_OUT_SPLITS, alternation
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_scope, walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_METRIC_NAME = re.compile(r"loss|acc|correct|err|metric|score|dice|iou", re.IGNORECASE)
_METER_CLASS = re.compile(r"Meter$|^Average|^RunningAverage|Tracker$")
_LOOPS = (ast.For, ast.AsyncFor, ast.While)
Loop = ast.For | ast.AsyncFor | ast.While


class EpochMetricNotReset(Rule):
    """Detects a loss or metric accumulator (`total_loss += loss.item()`, `correct +=
    (pred == y).sum()`, `losses.update(loss.item())` on an `AverageMeter`) created before an
    outer loop (the epoch loop), fed by an inner loop over batches (a training loop or a loop
    over a loader), read in the outer loop after the inner one (printed, logged, compared),
    and never re-created or reset inside the outer loop.

    Why it matters: the figure read at the end of the second epoch covers both epochs, the
    third three, and so on: the reported loss and accuracy lag behind the model, a
    divergence or an improvement shows up epochs late, and anything that selects or stops on
    it (the best checkpoint, early stopping, a plateau scheduler) acts on a blur of the whole
    run (FixMatch-pytorch's "Fix AverageMeter" moved its meters into the epoch loop).

    Also reported: an accumulator that a training loop fills and a loop over held-out data
    after it, in the same pass, adds to with no reset between them (HiDDeN's dict of meters,
    updated again by validation): the validation figures read after it average training
    and validation batches. Reported at the validation loop's update.

    Not reported: accumulators re-bound or reset anywhere in the outer loop (also the
    tutorial's `running_loss = 0.0` every 2000 batches, and a validation loop's counters
    reset before it by a tuple assignment, `n_predictions, n_correct = 0, 0`),
    `meter.reset()`, accumulators
    created inside a loop around the outer one, outer loops over a loader (running averages
    within an epoch), counters
    (`step += 1`), names that say nothing of a loss or metric, accumulators read only after
    the outer loop (a total over the run), inner loops that are neither training steps nor
    loops over a loader, modules that never mention an epoch (library code).

    Example:
        total_loss = 0.0
        for epoch in range(epochs):
            for x, y in train_loader:
                ...
                total_loss += loss.item()
            print(epoch, total_loss / len(train_loader))

    Fix: create or reset the accumulator at the start of each epoch (`total_loss = 0.0`, a
    new `AverageMeter()`, or `meter.reset()`) inside the epoch loop.
    """

    id = "epoch-metric-not-reset"
    point = 3
    severity = Severity.MEDIUM
    title = "Epoch metric accumulated across epochs"
    items: ClassVar[tuple[str, ...]] = ("3.4",)
    triggers = Triggers(lowered=("epoch",))

    def applies(self, ctx: ModuleContext) -> bool:
        source = ctx.source
        if not ("+=" in source or ".update(" in source) or "for " not in source:
            return False
        if "epoch" not in source.lower():
            return False  # the outer loop is an epoch loop: scripts name it so
        return "loader" in source.lower() or bool(ctx.loops.training_loops)

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        loops: list[Loop] = [*ctx.flow.nodes(ast.For), *ctx.flow.nodes(ast.While)]
        for outer in loops:
            if outer.body and in_loader_loop(ctx, outer.body[0]):
                continue  # a loop over batches: its figures are running averages of the epoch
            stale: dict[str, tuple[ast.stmt, ast.Name]] = {}
            for name, update in _accumulations(ctx, outer):
                binding = _bound_before(ctx, outer, name)
                if binding is None or name in stale or _reset_in(outer, name):
                    continue
                if any(isinstance(a, _LOOPS) for a in ctx.ancestors(binding)):
                    continue  # re-created by a loop around both (`while True:` of epochs)
                read = _read_after_inner(ctx, outer, name, update)
                if read is not None:
                    stale[name] = (binding, read)
            self._carried_into_validation(ctx, outer)
            if not stale:
                continue
            names = sorted(stale, key=lambda n: stale[n][0].lineno)
            binding, read = stale[names[0]]
            listed = ", ".join(f"`{n}`" for n in names)
            ctx.report(
                self,
                binding,
                f"{listed} {'is' if len(names) == 1 else 'are'} created before the loop of "
                f"line {outer.lineno} and never reset in it: what line {read.lineno} reads "
                "after each pass covers every pass so far, not the last one",
                data={"read_line": read.lineno, "loop_line": outer.lineno, "names": names},
            )

    def _carried_into_validation(self, ctx: ModuleContext, outer: Loop) -> None:
        """A training loop and, after it in the same pass of `outer`, a loop over held-out
        data feeding the same accumulator with no reset between them (HiDDeN's `losses_accu`
        meters, created for the training batches and updated again by validation): what is
        read after the validation loop averages training and validation batches."""
        training = {id(loop.node) for loop in ctx.loops.training_loops}
        fed: dict[str, list[tuple[Loop, ast.AST]]] = {}
        for node in walk_scope(outer.body):
            name = _fed_name(ctx, node)
            inner = _outermost_loop(ctx, node, outer) if name else None
            if name and inner is not None:
                fed.setdefault(name, []).append((inner, node))
        for name, sites in fed.items():
            trained = [
                loop
                for loop, update in sites
                if not _held_out_loop(ctx, loop)
                and (
                    id(loop) in training
                    or in_loader_loop(ctx, update)
                    or _names_data(loop, _TRAIN_NAME)
                )
            ]
            for loop, update in sites:
                if not trained or not _held_out_loop(ctx, loop):
                    continue
                before = [t for t in trained if (t.end_lineno or t.lineno) < loop.lineno]
                if not before or _reset_between(outer, name, before[-1], loop):
                    continue
                read = _read_after_inner(ctx, outer, name, update)
                if read is None:
                    continue
                ctx.report(
                    self,
                    update,
                    f"`{name}` still holds what the training loop of line {before[-1].lineno} "
                    "put in it: this loop over held-out data adds to it with no reset "
                    f"between, so the validation figures line {read.lineno} reads average "
                    "training and validation batches",
                    data={"read_line": read.lineno, "loop_line": loop.lineno, "names": [name]},
                )
                break


_HELD_OUT_NAME = re.compile(rf"(^|_)({alternation(HELD_OUT_SPLITS)})(_|$|loader|data|set)", re.I)
_TRAIN_NAME = re.compile(r"(^|_)train(_|$|loader|data|set)", re.I)


def _names_data(loop: Loop, pattern: re.Pattern[str]) -> bool:
    """The loop iterates something named like that data (`train_data`, `val_loader`)."""
    if not isinstance(loop, ast.For | ast.AsyncFor):
        return False
    return any(
        pattern.search(identifier(n))
        for n in walk_tree(loop.iter)
        if isinstance(n, ast.Name | ast.Attribute)
    )


def _held_out_loop(ctx: ModuleContext, loop: Loop) -> bool:
    """A loop over validation or test data (`for image, _ in val_data`)."""
    if not isinstance(loop, ast.For | ast.AsyncFor):
        return False
    if _names_data(loop, _HELD_OUT_NAME):
        return True
    return ctx.flow.held_out_kind(loop.iter, frozenset({"test", "val"})) is not None


def _outermost_loop(ctx: ModuleContext, node: ast.AST, outer: Loop) -> Loop | None:
    """The loop directly inside `outer` that holds `node` (the loop over batches, not a
    `for name, loss in losses.items()` inside it)."""
    found: Loop | None = None
    for anc in ctx.ancestors(node):
        if anc is outer:
            return found
        if isinstance(anc, _LOOPS):
            found = anc
    return None


def _fed_name(ctx: ModuleContext, node: ast.AST, *, in_dicts: bool = True) -> str:
    """The accumulator `node` adds to: `total_loss += ...`, `meter.update(...)`, or (with
    `in_dicts`) a meter kept in a dict of them (`losses_accu[name].update(loss)`)."""
    if (
        isinstance(node, ast.AugAssign)
        and isinstance(node.op, ast.Add)
        and isinstance(node.target, ast.Name)
        and not isinstance(node.value, ast.Constant)
        and _METRIC_NAME.search(node.target.id)
    ):
        return node.target.id
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "update"
    ):
        return ""
    receiver = node.func.value
    if isinstance(receiver, ast.Name) and _is_meter(ctx, receiver):
        return receiver.id
    if (
        in_dicts
        and isinstance(receiver, ast.Subscript)
        and isinstance(receiver.value, ast.Name)
        and _METRIC_NAME.search(receiver.value.id)
    ):
        return receiver.value.id
    return ""


def _reset_between(outer: Loop, name: str, first: Loop, second: Loop) -> bool:
    """`name` re-bound or reset by a statement of `outer` between the two loops."""
    start, end = first.end_lineno or first.lineno, second.lineno
    for node in walk_scope(outer.body):
        if not start < getattr(node, "lineno", 0) < end:
            continue
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            # `n_predictions, n_correct = 0, 0` resets both names of the tuple
            if any(isinstance(n, ast.Name) and n.id == name for t in targets for n in walk_tree(t)):
                return True
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("reset", "clear", "zero_")
            and name in {identifier(n) for n in walk_tree(node.func.value)}
        ):
            return True
    return False


def _accumulations(ctx: ModuleContext, outer: Loop) -> list[tuple[str, ast.AST]]:
    """(name, update) for the metric accumulations of the batch loops inside `outer`."""
    found: list[tuple[str, ast.AST]] = []
    training = {id(loop.node) for loop in ctx.loops.training_loops}
    for node in walk_scope(outer.body):
        name = _fed_name(ctx, node, in_dicts=False)
        if not name:
            continue
        inner = _inner_loop(ctx, node, outer)
        if inner is not None and (id(inner) in training or in_loader_loop(ctx, node)):
            found.append((name, node))
    return found


def _inner_loop(ctx: ModuleContext, node: ast.AST, outer: Loop) -> Loop | None:
    """The loop inside `outer` that holds `node`, if any."""
    for anc in ctx.ancestors(node):
        if anc is outer:
            return None
        if isinstance(anc, _LOOPS):
            return anc
    return None


def _is_meter(ctx: ModuleContext, name: ast.Name) -> bool:
    return any(
        isinstance(v, ast.Call) and bool(_METER_CLASS.search(identifier(v.func)))
        for v in ctx.flow.definitions(name)
    )


def _bound_before(ctx: ModuleContext, outer: Loop, name: str) -> ast.stmt | None:
    """The statement binding `name` before `outer` in the same scope (`total = 0.0`,
    `losses = AverageMeter()`)."""
    scope = ctx.enclosing_function(outer)
    body = scope.body if scope is not None else ctx.tree.body
    found: ast.stmt | None = None
    for stmt in walk_scope(body):
        if not isinstance(stmt, ast.Assign) or stmt.lineno >= outer.lineno:
            continue
        if any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets):
            found = stmt
    return found


def _reset_in(outer: Loop, name: str) -> bool:
    """`name` re-bound (`total = 0`) or reset (`meter.reset()`) anywhere in `outer`."""
    for node in walk_scope(outer.body):
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(n, ast.Name) and n.id == name for t in targets for n in walk_tree(t)):
                return True
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("reset", "clear", "zero_")
            and identifier(node.func.value) == name
        ):
            return True
    return False


def _read_after_inner(
    ctx: ModuleContext, outer: Loop, name: str, update: ast.AST
) -> ast.Name | None:
    """A read of `name` in `outer` after the inner loop that updates it, outside that loop."""
    inner = _inner_loop(ctx, update, outer)
    if inner is None:
        return None
    end = inner.end_lineno or inner.lineno
    for node in walk_scope(outer.body):
        if (
            isinstance(node, ast.Name)
            and node.id == name
            and isinstance(node.ctx, ast.Load)
            and node.lineno > end
            and _inner_loop(ctx, node, outer) is None
        ):
            return node
    return None
