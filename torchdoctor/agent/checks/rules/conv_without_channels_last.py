"""conv-without-channels-last: a CUDA conv net trained in the default NCHW layout."""

from __future__ import annotations

import ast
from typing import Any, ClassVar

from torchdoctor.agent.checks.analysis.project import (
    Pending,
    ProjectIndex,
    defer,
    imported_classes,
)
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.checks.loops import nodes_of, walk_tree
from torchdoctor.agent.checks.patterns import builds_conv2d, uses_cuda, visible_training_loop
from torchdoctor.agent.models import Severity


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
        if anchor is None:
            return
        message = (
            "a conv net trains on CUDA in NCHW: in channels_last cuDNN's tensor-core kernels "
            "run without a transpose around every convolution"
        )
        if any(builds_conv2d(ctx, c) for c in nodes_of(ctx, ast.Call)):
            ctx.report(self, anchor, message, header_only=True)
            return
        # The network is another file's class (`from models import ResNet18`): the project
        # pass knows whether it, or a submodule it builds, has 2-D convolutions.
        found = ctx.finding(self, anchor, message, header_only=True)
        if found is None:
            return
        for symbol in _trained_project_classes(ctx):
            defer(ctx, self.id, Pending(symbol=symbol, needs="convolutional", finding=found))

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        return ProjectIndex.from_facts(facts).confirmed(facts, cls.id)


def _trained_project_classes(ctx: ModuleContext) -> list[str]:
    """Classes from the project's other files whose instances the training loops call."""
    found: list[str] = []
    for loop in ctx.loops.training_loops:
        for node in walk_tree(loop.node):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute):
                found += [c for c in imported_classes(ctx, node.func) if c not in found]
    return found
