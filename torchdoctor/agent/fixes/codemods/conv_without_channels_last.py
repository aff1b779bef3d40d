"""conv-without-channels-last: convert the conv net's weights to NHWC before training."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import (
    BF16_RTOL,
    Codemod,
    SourceContext,
    method_call,
)
from torchdoctor.agent.fixes.codemods.common import flagged_loop, is_wrapped, models_called_in
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class ConvWithoutChannelsLastFix(Codemod):
    """Inserts `model.to(memory_format=torch.channels_last)` before the outermost loop that
    trains the model. `Module.to` converts in place (parameters keep their identity, so an
    optimizer built earlier still holds them), and a convolution whose weight is
    channels_last returns channels_last outputs whatever its input's layout, so the inputs
    need no edit. Other kernels sum in another order: a bf16-level tolerance. Not applied to
    a wrapped model (DDP's gradient buckets are laid out for the parameters it was given),
    nor in a file that flattens a tensor with `.view` (see `_flattening_view`)."""

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
        flattening = next(iter(ctx.find(cst.Call, where=_flattening_view)), None)
        if flattening is not None:
            return ctx.decline(
                f"line {ctx.line(flattening)} flattens a tensor with .view: on a conv's "
                "channels_last output, or a gradient through one, .view to fewer dimensions "
                "raises; use .flatten() or .reshape() there first"
            )
        torch = ctx.require_module("torch")
        lines = "".join(f"{m}.to(memory_format={torch}.channels_last)\n" for m in models)
        ctx.insert_before(outer, lines)
        return True


def _flattening_view(call: cst.Call) -> bool:
    """`x.view(n, -1)`, `x.view(-1, 1024 * 4 * 4)`, `x.view(-1)`: a view to one or two
    dimensions. A channels_last NCHW tensor keeps C innermost, so no view can merge C with H and
    W (WGAN-GP's `gradients.view(gradients.size(0), -1)` of a discriminator's input gradient, the
    classic `x.view(x.size(0), -1)` before a CNN's linear head). `.view(1)` of a scalar is
    left alone; views to three or more dimensions (`x.view(b, c, -1)`) may keep C apart."""
    if method_call(call, "view") is None or not 1 <= len(call.args) <= 2:
        return False
    if any(arg.keyword is not None or arg.star for arg in call.args):
        return False
    return not all(
        isinstance(arg.value, cst.Integer) and arg.value.value == "1" for arg in call.args
    )
