"""conv-without-channels-last: convert the conv net's weights to NHWC before training."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import BF16_RTOL, Codemod, SourceContext, dotted_name
from torchdoctor.agent.fixes.codemods.common import flagged_loop, model_called_in, model_names
from torchdoctor.agent.fixes.models import FixKind, FixTarget

_WRAPPERS = {"DistributedDataParallel", "DDP", "DataParallel", "FullyShardedDataParallel", "FSDP"}


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
        models = self._models(ctx, loop, target)
        if not models:
            return ctx.decline(
                "the loop calls no model this fix can name (none, or several behind a helper)"
            )
        if any(m.endswith(".module") or self._wrapped(ctx, m) for m in models):
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

    @staticmethod
    def _models(ctx: SourceContext, loop: cst.For | cst.While, target: FixTarget) -> list[str]:
        """The model the loop calls, else every model the module builds that the loop calls
        (a GAN's generator and discriminator, both converted)."""
        model = model_called_in(ctx, loop.body, target.data.get("model"))
        if model is not None:
            return [model]
        built = model_names(ctx)
        called = {dotted_name(c.func) for c in ctx.find(cst.Call, inside=loop.body)}
        return sorted(n for n in built if n in called)

    @staticmethod
    def _wrapped(ctx: SourceContext, model: str) -> bool:
        """`model` is bound to a DDP/DataParallel/FSDP wrapper somewhere in the module."""
        for assign in ctx.find(cst.Assign):
            if not isinstance(assign.value, cst.Call):
                continue
            callee = ctx.qualname(assign.value.func) or dotted_name(assign.value.func) or ""
            if callee.split(".")[-1] not in _WRAPPERS:
                continue
            if any(dotted_name(t.target) == model for t in assign.targets):
                return True
        return False
