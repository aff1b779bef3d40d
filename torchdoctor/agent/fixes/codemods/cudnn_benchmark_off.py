"""cudnn-benchmark-off: let cuDNN autotune fixed-shape convolutions."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import BF16_RTOL, Codemod, SourceContext, dotted_name
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class CudnnBenchmarkOffFix(Codemod):
    """Inserts `torch.backends.cudnn.benchmark = True` after the imports: cuDNN times its
    convolution algorithms on the first batch of each shape and keeps the fastest. Pays with
    fixed input shapes (the timing check decides); another algorithm sums in another order,
    hence a bf16-level tolerance. Not applied where the script asks for determinism."""

    rule = "cudnn-benchmark-off"
    kind = FixKind.PERFORMANCE
    cuda_only = True
    summary = "torch.backends.cudnn.benchmark = True"
    rtol = BF16_RTOL

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        for assign in ctx.find(cst.Assign):
            for t in assign.targets:
                name = dotted_name(t.target) or ""
                if name.endswith(("cudnn.benchmark", "cudnn.deterministic")):
                    return False
        if any(
            ctx.qualname(c.func) == "torch.use_deterministic_algorithms" for c in ctx.find(cst.Call)
        ):
            return False
        torch = ctx.require_module("torch")
        ctx.insert_module_level(f"{torch}.backends.cudnn.benchmark = True\n")
        return True
