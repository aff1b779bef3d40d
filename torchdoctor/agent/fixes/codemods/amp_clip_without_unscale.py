"""amp-clip-without-unscale: unscale the gradients before clipping them."""

from __future__ import annotations

from torchdoctor.agent.fixes.codemods.base import (
    Codemod,
    SourceContext,
    enclosing_body,
    line_statement,
)
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class AmpClipWithoutUnscaleFix(Codemod):
    """Inserts `scaler.unscale_(optimizer)` right before the clipping statement, with the
    scaler and optimizer of the `scaler.step(optimizer)` that follows it (the rule names
    them): the clip then sees the real gradients, and `scaler.step` knows they are already
    unscaled (it does not unscale twice). Declines when no single scaler step follows."""

    rule = "amp-clip-without-unscale"
    kind = FixKind.CORRECTNESS
    summary = "call scaler.unscale_(optimizer) before clipping"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        scaler, optimizer = target.data.get("scaler"), target.data.get("optimizer")
        if not isinstance(scaler, str) or not isinstance(optimizer, str):
            return ctx.decline(
                "no single scaler.step(optimizer) follows the clipping in its function: "
                "unscale that optimizer's gradients by hand"
            )
        clip = line_statement(ctx, target.line)
        if clip is None or "clip_grad" not in ctx.code(clip):
            return ctx.decline("the clipping shares its line with other code")
        unscale = f"{scaler}.unscale_({optimizer})"
        body = list(enclosing_body(ctx, clip) or [])
        earlier = body[: body.index(clip)] if clip in body else []
        if earlier and ctx.code(earlier[-1]).strip() == unscale:
            return False
        ctx.insert_before(clip, f"{unscale}\n")
        return True
