"""tf32-off: float32 matmuls without TF32 on CUDA."""

from __future__ import annotations

from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import TRAINING_LOOP_TEXT
from torchdoctor.agent.checks.patterns import uses_cuda, visible_training_loop
from torchdoctor.agent.models import Severity

_TF32 = ("set_float32_matmul_precision", "allow_tf32", "autocast", "bfloat16", "fp32_precision")


class Tf32Off(Rule):
    """Detects CUDA training in float32 with TF32 matmuls left off (no
    `torch.set_float32_matmul_precision("high")`, no `allow_tf32 = True`, no autocast).
    Opt-in: TF32 reduces matmul precision to a 10-bit mantissa, which a few numerically
    sensitive models cannot accept.

    Why it matters: since PyTorch 1.12, float32 matmuls default to full IEEE precision on
    Ampere and later GPUs; TF32 runs them on tensor cores several times faster with accuracy
    that is enough for nearly all training.

    Example:
        model = Net().cuda()
        for x, y in loader: ...

    Fix: `torch.set_float32_matmul_precision("high")` once at start-up (or use bf16 autocast).
    """

    id = "tf32-off"
    point = 6
    severity = Severity.LOW
    title = "TF32 matmuls not enabled"
    items: ClassVar[tuple[str, ...]] = ("6.2",)
    triggers = TRAINING_LOOP_TEXT
    tier = "opt-in"

    def applies(self, ctx: ModuleContext) -> bool:
        return uses_cuda(ctx) and bool(ctx.loops.training_loops)

    def finish(self, ctx: ModuleContext) -> None:
        if any(marker in ctx.source for marker in _TF32) or not self.applies(ctx):
            return
        anchor = visible_training_loop(ctx)
        if anchor is None:
            return
        ctx.report(
            self,
            anchor,
            "float32 matmuls run at full precision: set_float32_matmul_precision('high') "
            "enables TF32 tensor cores",
            header_only=True,
        )
