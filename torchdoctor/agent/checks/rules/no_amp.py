"""no-amp: CUDA training entirely in float32."""

from __future__ import annotations

from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import TRAINING_LOOP_TEXT
from torchdoctor.agent.checks.patterns import uses_cuda, visible_training_loop
from torchdoctor.agent.models import Severity

_MIXED_PRECISION = ("autocast", "amp.", "GradScaler", "bfloat16", "float16", ".half(", "precision=")


class NoAmp(Rule):
    """Detects a training loop in a module that trains on CUDA and never uses mixed precision
    (`torch.autocast`, `GradScaler`, bf16/fp16 dtypes, Lightning's `precision=`).

    Why it matters: on tensor-core GPUs (V100 and later) bf16/fp16 matmuls and convolutions run
    several times faster than float32 and halve activation memory; bf16 autocast needs no loss
    scaling and usually no other change. A model of many small layers gains little: its step is
    bound by kernel launches, not arithmetic (the nanoGPT lecture's 6-head, 384-wide model on an
    H100: `audit --run "python gpt.py" --fix` measured bf16 autocast 21% slower and refused
    it), so the codemod's fix is kept only when its measured speed-up clears the noise.

    Example:
        for x, y in loader:
            loss = criterion(model(x.cuda()), y.cuda())
            loss.backward()

    Fix: `with torch.autocast("cuda", dtype=torch.bfloat16): loss = criterion(model(x), y)`
    (fp16 additionally needs `torch.amp.GradScaler("cuda")`); check the loss curve matches.
    """

    id = "no-amp"
    point = 6
    severity = Severity.LOW
    title = "No mixed precision in CUDA training"
    items: ClassVar[tuple[str, ...]] = ("6.4",)
    triggers = TRAINING_LOOP_TEXT

    def applies(self, ctx: ModuleContext) -> bool:
        return uses_cuda(ctx) and bool(ctx.loops.training_loops)

    def finish(self, ctx: ModuleContext) -> None:
        if any(marker in ctx.source for marker in _MIXED_PRECISION) or not uses_cuda(ctx):
            return
        anchor = visible_training_loop(ctx)
        if anchor is not None:
            ctx.report(
                self,
                anchor,
                "CUDA training runs entirely in float32: bf16 autocast runs matmuls and "
                "convolutions several times faster on tensor cores (a model of many small "
                "layers is bound by kernel launches instead, and gains little: the fix is "
                "verified by timing)",
                header_only=True,
            )
