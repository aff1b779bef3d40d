"""scheduler-before-optimizer: step the LR scheduler after the optimizer's step."""

from __future__ import annotations

import re

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import (
    Codemod,
    SourceContext,
    enclosing_body,
    line_statement,
)
from torchdoctor.agent.fixes.models import FixKind, FixTarget

_SETS_LR = re.compile(r"\[\s*['\"](?:lr|initial_lr)['\"]\s*\]\s*(?:[-+*/]?=)(?!=)")


class SchedulerBeforeOptimizerFix(Codemod):
    """Moves the flagged `scheduler.step()` (a statement of its own, or an `if` that holds
    only it) to right after the statement of its block that steps the optimizer (the rule's
    `optimizer_step_line`): the `optimizer.step()` itself for a per-batch schedule, the inner
    batch loop for a per-epoch one. Declines when the optimizer step is not later in the same
    block, or when code in between sets a learning rate by hand (warm-up code that expects
    the scheduler to have stepped first)."""

    rule = "scheduler-before-optimizer"
    kind = FixKind.CORRECTNESS
    summary = "step the LR scheduler after optimizer.step()"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        step_line = target.data.get("optimizer_step_line")
        if not isinstance(step_line, int):
            return ctx.decline(
                "the optimizer steps in a function of another file: move the scheduler's "
                "step after that call by hand"
            )
        moved = _scheduler_statement(ctx, target.line)
        if moved is None:
            return ctx.decline("the scheduler's step shares its statement with other code")
        body = list(enclosing_body(ctx, moved) or [])
        start = body.index(moved) if moved in body else -1
        anchor = next(
            (
                index
                for index, stmt in enumerate(body)
                if index > start >= 0 and ctx.line(stmt) <= step_line <= ctx.end_line(stmt)
            ),
            None,
        )
        if anchor is None:
            return ctx.decline(
                f"the optimizer step (line {step_line}) is not later in the scheduler's block: "
                "moving the step would change how often it runs"
            )
        between = body[start + 1 : anchor + 1]
        if any(_SETS_LR.search(ctx.code(stmt)) for stmt in between):
            return ctx.decline(
                "the code before the optimizer step sets a learning rate by hand, after the "
                "scheduler's step: moving the step would undo that"
            )
        ctx.remove(moved)  # its comment lines travel with it
        ctx.insert_after(body[anchor], [moved])
        return True


def _scheduler_statement(ctx: SourceContext, line: int) -> cst.BaseStatement | None:
    """The statement to move: the one-call line at `line`, or the `if` (no `else`) whose body
    is only that line (`if scheduler is not None: scheduler.step()`)."""
    line_found = line_statement(ctx, line)
    if line_found is None or not isinstance(line_found.body[0], cst.Expr):
        return None
    if ".step(" not in ctx.code(line_found):
        return None
    statement: cst.BaseStatement = line_found
    block = ctx.parent(statement)
    owner = ctx.parent(block) if block is not None else None
    if (
        isinstance(block, cst.IndentedBlock)
        and isinstance(owner, cst.If)
        and owner.orelse is None
        and len(block.body) == 1
    ):
        return owner
    return statement
