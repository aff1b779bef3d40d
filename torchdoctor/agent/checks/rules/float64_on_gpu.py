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

    Not reported: a float64 tensor made on the CPU (no `device=`) and turned into a NumPy
    array (U-ViT's beta schedule: `torch.linspace(..., dtype=torch.float64) ** 2`, then
    `.numpy()`): it never reaches the GPU.

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
            if _handed_to_numpy(ctx, node):
                continue
            ctx.report(
                self,
                node,
                "float64 on a GPU runs at a fraction of float32 speed and doubles memory traffic",
            )


def _handed_to_numpy(ctx: ModuleContext, node: ast.Call) -> bool:
    """A factory with a float64 `dtype` and no `device`, whose value (through arithmetic and
    the name it is bound to) is converted with `.numpy()`: a CPU-side schedule or table."""
    if kwarg(node, "dtype") is None or kwarg(node, "device") is not None:
        return False
    value: ast.AST = node
    parent = ctx.parents.get(value)
    while isinstance(parent, ast.BinOp | ast.UnaryOp):
        value, parent = parent, ctx.parents.get(parent)
    if _numpy_of(ctx, value):
        return True
    if not (isinstance(parent, ast.Assign) and len(parent.targets) == 1):
        return False
    target = parent.targets[0]
    if not isinstance(target, ast.Name):
        return False
    scope = ctx.enclosing_function(node)
    reads = [r for r in ctx.flow.reads_of(target.id) if ctx.enclosing_function(r) is scope]
    return bool(reads) and all(_numpy_of(ctx, r) for r in reads)


def _numpy_of(ctx: ModuleContext, value: ast.AST) -> bool:
    parent = ctx.parents.get(value)
    return isinstance(parent, ast.Attribute) and parent.attr == "numpy"
