"""cudnn-benchmark-with-determinism: turn benchmark mode off where determinism is requested."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext, dotted_name
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class CudnnBenchmarkWithDeterminismFix(Codemod):
    """Sets the flagged `torch.backends.cudnn.benchmark = True` to `False`; nothing else."""

    rule = "cudnn-benchmark-with-determinism"
    kind = FixKind.CORRECTNESS
    summary = "torch.backends.cudnn.benchmark = False next to the determinism request"
    reproducibility = True

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        for assign in ctx.find(cst.Assign, within=(target.line, target.line)):
            names = [dotted_name(t.target) or "" for t in assign.targets]
            if (
                len(names) == 1
                and names[0].endswith("cudnn.benchmark")
                and isinstance(assign.value, cst.Name)
                and assign.value.value == "True"
            ):
                ctx.substitute(assign.value, cst.Name("False"))
                return True
        return False
