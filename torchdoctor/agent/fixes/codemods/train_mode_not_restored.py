"""train-mode-not-restored: put the model back in training mode after its evaluation."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import (
    Codemod,
    SourceContext,
    enclosing_body,
    statement_of,
)
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class TrainModeNotRestoredFix(Codemod):
    """Calls `<model>.train()` again, for the model the rule saw put in eval mode: right
    after the evaluation helper's call (`validate(model, loader)`), or, for an `.eval()`
    written inline after the training part of the loop's body, as the first statement of
    that loop's body, so each iteration trains in training mode and evaluates in eval mode.
    Declines when the model is not named at the call, or when the inline evaluation comes
    before the training in the body (where `.train()` belongs then is a choice)."""

    rule = "train-mode-not-restored"
    kind = FixKind.CORRECTNESS
    summary = "call model.train() again after the evaluation"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        model, loop_line = target.data.get("model"), target.data.get("loop_line")
        if not isinstance(model, str) or not isinstance(loop_line, int):
            return ctx.decline("the model put in eval mode is not named at the call")
        restore = f"{model}.train()\n"
        calls = ctx.find(cst.Call, where=lambda c: ctx.line(c) == target.line)
        evaluation = statement_of(ctx, calls[0]) if calls else None
        if evaluation is None:
            return ctx.decline("no call at the finding's line")
        if ctx.code(evaluation).strip() == restore.strip():
            return False  # the line the fix wrote
        if not target.data.get("direct"):
            following = list(enclosing_body(ctx, evaluation) or [])
            after = following[following.index(evaluation) + 1 :] if evaluation in following else []
            if after and ctx.code(after[0]).strip() == restore.strip():
                return False
            ctx.insert_after(evaluation, restore)
            return True
        loops: list[cst.For | cst.While] = [
            *ctx.find(cst.For, where=lambda n: ctx.line(n) == loop_line),
            *ctx.find(cst.While, where=lambda n: ctx.line(n) == loop_line),
        ]
        if "eval(" not in ctx.code(evaluation) and "train(False)" not in ctx.code(evaluation):
            return ctx.decline("the finding's line no longer switches the model to eval mode")
        if len(loops) != 1 or not isinstance(loops[0].body, cst.IndentedBlock):
            return ctx.decline("the training loop is not a plain loop at the line the rule saw")
        body = list(loops[0].body.body)
        holder = next((s for s in body if _holds(ctx, s, evaluation)), None)
        trained = next((i for i, s in enumerate(body) if "backward(" in ctx.code(s)), None)
        if holder is None or trained is None or trained >= body.index(holder):
            return ctx.decline(
                "the evaluation comes before the training in the loop's body: call "
                f"{model}.train() where the training starts"
            )
        if ctx.code(body[0]).strip() == restore.strip():
            return False
        ctx.insert_before(body[0], restore)
        return True


def _holds(ctx: SourceContext, statement: cst.CSTNode, inner: cst.CSTNode) -> bool:
    return statement is inner or any(a is statement for a in ctx.ancestors(inner))
