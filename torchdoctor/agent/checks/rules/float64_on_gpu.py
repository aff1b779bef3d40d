"""float64-on-gpu: double precision in GPU code."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import kwarg, uses_cuda
from torchdoctor.agent.models import Severity

_DOUBLE = frozenset({"torch.float64", "torch.double"})
_CASTS = ("to", "type", "set_default_dtype")


class Float64OnGpu(Rule):
    """Detects double precision in a module that trains on CUDA: `.double()`, `dtype=torch.float64`
    / `torch.double`, `.to(torch.float64)`, `torch.set_default_dtype(torch.float64)`.

    Why it matters: data-centre GPUs run FP64 at a small fraction of their FP32 rate (and far
    below their TF32/BF16 tensor-core rate), and doubles take twice the memory and bandwidth;
    a single float64 tensor also promotes everything it touches. Deep learning rarely needs it.

    Example:
        features = torch.from_numpy(array).double().cuda()

    Fix: use `.float()` / `dtype=torch.float32` (and convert NumPy float64 arrays with
    `torch.from_numpy(a).float()`); keep float64 only where a numerical analysis requires it.
    """

    id = "float64-on-gpu"
    point = 6
    severity = Severity.LOW
    title = "float64 on the GPU"
    items: ClassVar[tuple[str, ...]] = ("6.4",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    triggers = Triggers(("double", "float64"))

    def __init__(self) -> None:
        self.candidates: list[ast.Call] = []

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        func = node.func
        hit = False
        if isinstance(func, ast.Attribute) and func.attr == "double" and not node.args:
            hit = ctx.qualname(func) is None
        else:
            dtype = kwarg(node, "dtype")
            if dtype is not None and ctx.qualname(dtype) in _DOUBLE:
                hit = True
            elif isinstance(func, ast.Attribute) and func.attr in _CASTS:
                hit = any(ctx.qualname(a) in _DOUBLE for a in node.args)
        if hit and uses_cuda(ctx):
            self.candidates.append(node)

    def finish(self, ctx: ModuleContext) -> None:
        if not self.candidates or not ctx.loops.training_loops:
            return
        for node in self.candidates:
            ctx.report(
                self,
                node,
                "float64 on a GPU runs at a fraction of float32 speed and doubles memory traffic",
            )
