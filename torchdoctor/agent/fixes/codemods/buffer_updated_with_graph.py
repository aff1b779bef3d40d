"""buffer-updated-with-graph: a buffer written in `forward` with autograd on -> under no_grad."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext, line_statement
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class BufferUpdatedWithGraphFix(Codemod):
    """Writes the buffer under `torch.no_grad()`: the statement computes and stores the same
    values, and the buffer no longer holds this step's graph (so later steps' graphs are not
    built on it). Only the flagged statement moves into the block; a write that shares its
    line with other code is left to a human."""

    rule = "buffer-updated-with-graph"
    kind = FixKind.CORRECTNESS
    summary = "update the buffer under torch.no_grad()"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        stmt = line_statement(ctx, target.line)
        if stmt is None:
            return ctx.decline("the write shares its line with other code")
        if any(
            isinstance(a, cst.With) and "no_grad" in ctx.code(a.items[0])
            for a in ctx.ancestors(stmt)
        ):
            return False  # already under no_grad
        torch = ctx.require_module("torch")
        block = cst.With(
            items=[cst.WithItem(item=cst.parse_expression(f"{torch}.no_grad()"))],
            body=cst.IndentedBlock(body=[stmt.with_changes(leading_lines=[])]),
            leading_lines=stmt.leading_lines,
        )
        ctx.substitute(stmt, block)
        return True
