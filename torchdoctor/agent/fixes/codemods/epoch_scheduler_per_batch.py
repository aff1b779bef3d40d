"""epoch-scheduler-per-batch: step an epoch-level schedule once an epoch."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext, line_statement
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class EpochSchedulerPerBatchFix(Codemod):
    """Moves the flagged `scheduler.step()` from the body of the loop over batches (the rule
    names its line) to right after that loop: the schedule, whose period the rule read in
    epochs, then advances once per pass over the data. Declines for a step nested in a
    branch of the batch loop (an accumulation guard: where it belongs is a choice)."""

    rule = "epoch-scheduler-per-batch"
    kind = FixKind.CORRECTNESS
    summary = "step the epoch-level scheduler after the loop over batches"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        loop_line = target.data.get("loop_line")
        if not isinstance(loop_line, int):
            return ctx.decline("the scheduler's period is given in another file")
        step = line_statement(ctx, target.line)
        if step is None or ".step(" not in ctx.code(step):
            return ctx.decline("the scheduler's step shares its line with other code")
        block = ctx.parent(step)
        loop = ctx.parent(block) if block is not None else None
        if not isinstance(loop, cst.For) or ctx.line(loop) != loop_line:
            return ctx.decline(
                "the step is nested in a branch of the batch loop: move it after the loop by hand"
            )
        ctx.remove(step)  # its comment lines travel with it
        ctx.insert_after(loop, [step])
        return True
