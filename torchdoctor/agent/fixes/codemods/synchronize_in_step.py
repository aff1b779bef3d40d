"""synchronize-in-step: drop the per-step device synchronisation."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import (
    EXACT_RTOL,
    Codemod,
    SourceContext,
    descendants,
    enclosing_body,
    not_parsed,
)
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class SynchronizeInStepFix(Codemod):
    """Deletes the flagged `torch.cuda.synchronize()` when it is a statement of its own
    (`standalone` in the finding) and not the only statement of its block; the only statement
    of an `if torch.cuda.is_available():` (no else), it goes with its guard. Kernels on one
    stream stay ordered, so results do not change."""

    rule = "synchronize-in-step"
    kind = FixKind.PERFORMANCE
    summary = "remove torch.cuda.synchronize() from the training step"
    rtol = EXACT_RTOL
    overhead = True

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        found = _removable(ctx, target)
        if isinstance(found, str):
            return False
        ctx.remove(found)
        return True

    def explain(self, source: str, target: FixTarget) -> str | None:
        try:
            ctx = SourceContext(source)
        except (cst.ParserSyntaxError, RecursionError) as exc:
            return not_parsed(source, exc)
        found = _removable(ctx, target)
        return found if isinstance(found, str) else None


def _removable(ctx: SourceContext, target: FixTarget) -> cst.BaseStatement | str:
    """The statement to delete (the call's own line, or the `if` guarding only it), or why
    there is none."""
    if not target.data.get("standalone"):
        return "the synchronize is part of a larger expression: its value is used there"
    lines = ctx.find(
        cst.SimpleStatementLine,
        where=lambda s: ctx.line(s) == target.line and len(s.body) == 1,
    )
    if len(lines) != 1:
        return "the synchronize shares its line with other statements"
    statement: cst.BaseStatement = lines[0]
    expr = lines[0].body[0]
    if not isinstance(expr, cst.Expr) or not isinstance(expr.value, cst.Call):
        return "the flagged line is not a synchronize call of its own"
    if not (ctx.qualname(expr.value.func) or "").endswith(".synchronize"):
        return "the flagged line is not a synchronize call of its own"
    body = enclosing_body(ctx, statement)
    if body is not None and len(body) == 1:
        block = ctx.parent(statement)
        guard = ctx.parent(block) if block is not None else None
        if not isinstance(guard, cst.If):
            return "the synchronize is the only statement of its block: delete it with its block"
        if guard.orelse is not None:
            return (
                "the synchronize is the only statement of an `if` that has an else: the else "
                "stays, so rewrite the condition by hand"
            )
        if not _pure(ctx, guard.test):
            return (
                "the synchronize is the only statement of an `if` whose condition calls more "
                "than torch.cuda.is_available(): the call may do something, so it stays"
            )
        statement, body = guard, enclosing_body(ctx, guard)
    if body is None or len(body) < 2:
        return "the synchronize is the only statement of its block: delete it with its block"
    return statement


def _pure(ctx: SourceContext, test: cst.BaseExpression) -> bool:
    """A condition without effects: names, attributes, comparisons, and calls only to
    `torch.cuda.is_available()` (`if torch.cuda.is_available():`, `if args.cuda:`)."""
    return all(
        (ctx.qualname(node.func) or "").endswith("cuda.is_available")
        for node in descendants(test)
        if isinstance(node, cst.Call)
    )
