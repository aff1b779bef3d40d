"""clip-grad-order: move the clipping statement between backward() and the optimizer step."""

from __future__ import annotations

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext, line_statement
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class ClipGradOrderFix(Codemod):
    """Moves the flagged one-line clip statement right after the `backward()` statement (it
    was before it) or right before the optimizer step (it was after it), at the statement the
    rule anchored in the same block; nothing else moves."""

    rule = "clip-grad-order"
    kind = FixKind.CORRECTNESS
    summary = "clip gradients between backward() and optimizer.step()"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        side = target.data.get("move")
        anchor_line = target.data.get("anchor_line")
        if side not in ("after", "before") or not isinstance(anchor_line, int):
            return ctx.decline("backward() and the step are not both in the clipping's block")
        clip = line_statement(ctx, target.line)
        anchor = line_statement(ctx, anchor_line)
        if clip is None or anchor is None:
            return ctx.decline("the clipping or its anchor shares its line with other code")
        if ctx.parent(clip) is not ctx.parent(anchor):
            return ctx.decline(
                f"the clipping and line {anchor_line} are in different blocks: moving it "
                "would change when it runs"
            )
        ctx.remove(clip)  # its comment lines travel with it
        if side == "after":
            ctx.insert_after(anchor, [clip])
        else:
            ctx.insert_before(anchor, [clip])
        return True
