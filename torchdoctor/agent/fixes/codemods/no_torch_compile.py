"""no-torch-compile: compile the model before the training loop, on GPU runs."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import BF16_RTOL, Codemod, SourceContext, method_call
from torchdoctor.agent.fixes.codemods.common import flagged_loop, model_called_in
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class NoTorchCompileFix(Codemod):
    """Inserts `model.compile()` (in place, so `state_dict()` keys keep their names, unlike
    `model = torch.compile(model)`) before the outermost loop that trains it, guarded by
    `torch.cuda.is_available()`: compilation pays on GPU kernels; CPU runs stay eager."""

    rule = "no-torch-compile"
    kind = FixKind.PERFORMANCE
    summary = "model.compile() before the training loop on CUDA"
    rtol = BF16_RTOL

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        if any(
            method_call(c, "compile") or ctx.qualname(c.func) == "torch.compile"
            for c in ctx.find(cst.Call)
        ):
            return False
        loop = flagged_loop(ctx, target)
        if loop is None:
            return False
        model = model_called_in(ctx, loop.body, target.data.get("model"))
        if model is None:
            return False
        outer: cst.CSTNode = loop
        for anc in ctx.ancestors(loop):
            if isinstance(anc, cst.FunctionDef | cst.ClassDef):
                break
            if isinstance(anc, cst.For | cst.While):
                outer = anc
        torch = ctx.require_module("torch")
        ctx.insert_before(outer, f"if {torch}.cuda.is_available():\n    {model}.compile()\n")
        return True
