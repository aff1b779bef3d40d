"""no-torch-compile: a CUDA training loop that never uses `torch.compile`."""

from __future__ import annotations

from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import TRAINING_LOOP_TEXT
from torchdoctor.agent.checks.patterns import target_torch, uses_cuda, visible_training_loop
from torchdoctor.agent.models import Severity

_COMPILED = ("compile(", "torch._dynamo", "jit.script", "jit.trace")


class NoTorchCompile(Rule):
    """Detects a training loop, in a module that trains on CUDA with torch 2.x, where the model
    is never compiled (`torch.compile`, `model.compile()`).

    Why it matters: `torch.compile` fuses elementwise operations and reduces kernel launches
    and memory traffic; typical training speed-ups are 1.3-2x, that is the same energy and
    GPU-hours buying proportionally more steps. The first steps pay a compilation cost, so
    the probe measures whether it is repaid for this run.

    Example:
        model = Net().cuda()
        for x, y in loader: ...

    Fix: `model = torch.compile(model)` after moving it to the device (check graph breaks with
    `TORCH_LOGS=graph_breaks` and use `dynamic=True` for variable shapes).
    """

    id = "no-torch-compile"
    point = 8
    severity = Severity.LOW
    title = "Model not compiled"
    items: ClassVar[tuple[str, ...]] = ("8.2", "8.1")
    triggers = TRAINING_LOOP_TEXT

    def applies(self, ctx: ModuleContext) -> bool:
        return uses_cuda(ctx) and bool(ctx.loops.training_loops)

    def finish(self, ctx: ModuleContext) -> None:
        if any(marker in ctx.source for marker in _COMPILED) or not self.applies(ctx):
            return
        anchor = visible_training_loop(ctx)
        if anchor is None or (target_torch(ctx) or (2, 0)) < (2, 0):
            return
        ctx.report(
            self,
            anchor,
            "the training loop runs an uncompiled model: torch.compile typically cuts step "
            "time (and energy) by a third or more",
            header_only=True,
        )
