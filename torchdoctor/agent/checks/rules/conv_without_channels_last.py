"""conv-without-channels-last: a CUDA conv net trained in the default NCHW layout."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import nodes_of
from torchdoctor.agent.checks.patterns import nn_layer, uses_cuda, visible_training_loop
from torchdoctor.agent.models import Severity

_FACTORIES = ("torchvision.models.", "timm.create_model", "timm.models.")


class ConvWithoutChannelsLast(Rule):
    """Detects a module that trains a 2-D convolutional network (its own `nn.Conv2d` layers,
    or a torchvision/timm model) on CUDA and never mentions `channels_last`. Opt-in: the
    gain depends on the GPU, the precision and the layers, which the fix's timing decides.

    Why it matters: cuDNN's tensor-core convolution kernels work in NHWC; given NCHW tensors
    they transpose around every convolution (or fall back to slower kernels), so on Volta and
    later GPUs, with mixed precision above all, convolutions are often 1.2-2x faster in
    `torch.channels_last`.

    Example:
        model = torchvision.models.resnet50().cuda()
        for images, labels in loader: ...

    Fix: `model = model.to(memory_format=torch.channels_last)` before training (and, for
    the first layer, `images = images.to(device, memory_format=torch.channels_last)`).
    """

    id = "conv-without-channels-last"
    point = 6
    severity = Severity.LOW
    title = "Conv net not in channels_last memory format"
    items: ClassVar[tuple[str, ...]] = ("6.2",)
    tier = "opt-in"

    def applies(self, ctx: ModuleContext) -> bool:
        return uses_cuda(ctx) and bool(ctx.loops.training_loops)

    def finish(self, ctx: ModuleContext) -> None:
        if "channels_last" in ctx.source or not self.applies(ctx):
            return
        anchor = visible_training_loop(ctx)
        if anchor is None or not any(_builds_conv2d(ctx, c) for c in nodes_of(ctx, ast.Call)):
            return
        ctx.report(
            self,
            anchor,
            "a conv net trains on CUDA in NCHW: in channels_last cuDNN's tensor-core kernels "
            "run without a transpose around every convolution",
            header_only=True,
        )


def _builds_conv2d(ctx: ModuleContext, node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    if nn_layer(ctx, node) == "Conv2d":
        return True
    return (ctx.call_qualname(node) or "").startswith(_FACTORIES)
