"""conv-without-channels-last: convert the conv net's weights to NHWC before training."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import BF16_RTOL, Codemod, SourceContext
from torchdoctor.agent.fixes.codemods.common import flagged_loop, is_wrapped, models_called_in
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class ConvWithoutChannelsLastFix(Codemod):
    """Inserts `model.to(memory_format=torch.channels_last)` before the outermost loop that
    trains the model. `Module.to` converts in place (parameters keep their identity, so an
    optimizer built earlier still holds them), and a convolution whose weight is
    channels_last returns channels_last outputs whatever its input's layout, so the inputs
    need no edit. Other kernels sum in another order: a bf16-level tolerance. Not applied to
    a wrapped model (DDP's gradient buckets are laid out for the parameters it was given)."""

    rule = "conv-without-channels-last"
    kind = FixKind.PERFORMANCE
    summary = "model.to(memory_format=torch.channels_last) before training"
    rtol = BF16_RTOL

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        if "channels_last" in ctx.source:
            return False
        loop = flagged_loop(ctx, target)
        if loop is None:
            return ctx.decline("no training loop at the finding to put the conversion before")
        models = models_called_in(ctx, loop.body, target.data.get("model"))
        if not models:
            return ctx.decline(
                "the loop calls no model this fix can name (none, or several behind a helper)"
            )
        if any(is_wrapped(ctx, m) for m in models):
            return ctx.decline(
                "the model is wrapped (DDP, DataParallel, FSDP): convert it before wrapping, "
                "where it is built"
            )
        outer: cst.CSTNode = loop
        for anc in ctx.ancestors(loop):
            if isinstance(anc, cst.FunctionDef | cst.ClassDef):
                break
            if isinstance(anc, cst.For | cst.While):
                outer = anc
        torch = ctx.require_module("torch")
        lines = "".join(f"{m}.to(memory_format={torch}.channels_last)\n" for m in models)
        ctx.insert_before(outer, lines)
        return True
