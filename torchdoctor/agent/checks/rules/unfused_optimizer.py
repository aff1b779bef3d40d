"""unfused-optimizer: a CUDA optimizer that runs one kernel per parameter."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.vocabulary import FUSABLE_OPTIMIZERS
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import has_star_kwargs, kwarg, terminal_name, uses_cuda
from torchdoctor.agent.models import Severity


class UnfusedOptimizer(Rule):
    """Detects `Adam`/`AdamW`/`SGD`/`Adagrad` built without `fused=` or `foreach=` in a module
    that trains on CUDA.

    Why it matters: the default implementation picks the multi-tensor `foreach` path when it
    can, but the fused CUDA kernel updates all parameters in a handful of launches and is the
    fastest; with many small parameters the optimizer step can otherwise take a noticeable
    share of each step (the profiler's OptimizerSingleTensorPattern).

    Example:
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)

    Fix: `torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)` when all parameters are
    floating-point CUDA tensors.
    """

    id = "unfused-optimizer"
    point = 6
    severity = Severity.LOW
    title = "Optimizer not fused on CUDA"
    items: ClassVar[tuple[str, ...]] = ("6.5",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset({"Adam", "AdamW", "SGD", "Adagrad"})
    triggers = Triggers(("Adam", "SGD", "Adagrad"))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if terminal_name(node.func) not in ("Adam", "AdamW", "SGD", "Adagrad"):
            return
        if ctx.call_qualname(node) not in FUSABLE_OPTIMIZERS or has_star_kwargs(node):
            return
        if kwarg(node, "fused") is not None or kwarg(node, "foreach") is not None:
            return
        if uses_cuda(ctx):
            name = ctx.call_qualname(node) or ""
            ctx.report(
                self,
                node,
                f"{name.rsplit('.', 1)[-1]} on CUDA without fused=True: the update runs as many "
                "small kernels instead of one fused kernel",
            )
