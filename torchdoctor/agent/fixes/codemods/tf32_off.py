"""tf32-off: let float32 matmuls use TF32 tensor cores."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import BF16_RTOL, Codemod, SourceContext, dotted_name
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class Tf32OffFix(Codemod):
    """Inserts `torch.set_float32_matmul_precision("high")` after the imports: float32
    matmuls then run on TF32 tensor cores (10-bit mantissa), several times faster on
    Ampere and later; no effect on CPU."""

    rule = "tf32-off"
    kind = FixKind.PERFORMANCE
    cuda_only = True
    summary = 'torch.set_float32_matmul_precision("high")'
    rtol = BF16_RTOL

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        if any(
            ctx.qualname(c.func) == "torch.set_float32_matmul_precision" for c in ctx.find(cst.Call)
        ) or any(
            (dotted_name(t.target) or "").endswith("allow_tf32")
            for a in ctx.find(cst.Assign)
            for t in a.targets
        ):
            return False
        torch = ctx.require_module("torch")
        ctx.insert_module_level(f'{torch}.set_float32_matmul_precision("high")\n')
        return True
