"""cudnn-benchmark-off: a CUDA conv net without cuDNN autotuning."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import nodes_of
from torchdoctor.agent.checks.patterns import nn_layer, uses_cuda
from torchdoctor.agent.models import Severity


class CudnnBenchmarkOff(Rule):
    """Detects a module that trains a convolutional network on CUDA without
    `torch.backends.cudnn.benchmark = True`. Opt-in: with variable input shapes autotuning
    re-runs for every new shape, and it conflicts with bit-exact determinism.

    Why it matters: with fixed input shapes cuDNN can benchmark its convolution algorithms once
    and pick the fastest; without it a heuristic choice is used, often noticeably slower.

    Example:
        model = ResNet().cuda()
        for images, labels in loader: ...

    Fix: `torch.backends.cudnn.benchmark = True` at start-up when input shapes are fixed.
    """

    id = "cudnn-benchmark-off"
    point = 6
    severity = Severity.LOW
    title = "cudnn.benchmark not enabled"
    items: ClassVar[tuple[str, ...]] = ("6.2",)
    tier = "opt-in"

    def finish(self, ctx: ModuleContext) -> None:
        source = ctx.source
        if "Conv" not in source or "cudnn.benchmark" in source or not uses_cuda(ctx):
            return
        loops = ctx.loops.training_loops
        if loops and any(
            nn_layer(ctx, call).startswith("Conv") for call in nodes_of(ctx, ast.Call)
        ):
            ctx.report(
                self,
                loops[0].node,
                "a conv net trains on CUDA without cudnn.benchmark: fixed-shape convolutions "
                "can run on the fastest autotuned algorithm",
                header_only=True,
            )
