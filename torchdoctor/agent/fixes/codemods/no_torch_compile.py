"""no-torch-compile: compile the model before the training loop, on GPU runs."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import BF16_RTOL, Codemod, SourceContext, method_call
from torchdoctor.agent.fixes.codemods.common import flagged_loop, model_called_in
from torchdoctor.agent.fixes.models import FixKind, FixTarget

COMPILE_MODES = ("default", "max-autotune-no-cudagraphs", "reduce-overhead")
"""torch.compile's modes in order of cost (compile time, then CUDA-graph memory)."""
COMPILER_HOST_MB = 16384
"""Host memory for Inductor's compile workers on top of the script's own limit: one worker per
core, each importing torch and Triton (about 0.3-0.5 GB); max-autotune benchmarks kernels in
them too. The verification runs report the peak they reached."""


class NoTorchCompileFix(Codemod):
    """Inserts `model.compile()` (in place, so `state_dict()` keys keep their names, unlike
    `model = torch.compile(model)`) before the outermost loop that trains it, guarded by
    `torch.cuda.is_available()`: compilation pays on GPU kernels; CPU runs stay eager.
    `target.data["compile_mode"]` (set by the compile ladder) picks a mode other than the
    default."""

    rule = "no-torch-compile"
    kind = FixKind.PERFORMANCE
    summary = "model.compile() before the training loop on CUDA"
    rtol = BF16_RTOL
    extra_host_memory_mb = COMPILER_HOST_MB

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
        mode = target.data.get("compile_mode", "default")
        if mode not in COMPILE_MODES:
            return False
        arguments = "" if mode == "default" else f'mode="{mode}"'
        torch = ctx.require_module("torch")
        ctx.insert_before(
            outer, f"if {torch}.cuda.is_available():\n    {model}.compile({arguments})\n"
        )
        return True
