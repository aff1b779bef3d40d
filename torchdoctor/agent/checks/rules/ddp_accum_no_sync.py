"""ddp-accum-no-sync: gradient accumulation under DDP all-reduces every micro-batch."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.ddp import calls_method
from torchdoctor.agent.checks.loops import direct_effects, nodes_of, under_modulo_guard
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity


class DdpAccumNoSync(Rule):
    """Detects gradient accumulation (optimizer steps only every k micro-batches) in a module
    that wraps the model in `DistributedDataParallel`, with no `no_sync()` context.

    Why it matters: DDP all-reduces gradients on every `backward()`; during accumulation only
    the last micro-batch's all-reduce is needed, so the other k-1 are pure communication cost
    (often the dominant cost on multi-node jobs).

    Example:
        model = DDP(model)
        for i, (x, y) in enumerate(loader):
            criterion(model(x), y).div(k).backward()
            if (i + 1) % k == 0:
                optimizer.step(); optimizer.zero_grad()

    Fix: run the first k-1 micro-batches under `with model.no_sync():` (or use
    `accelerator.accumulate(model)`, which does it for you).
    """

    id = "ddp-accum-no-sync"
    point = 6
    severity = Severity.MEDIUM
    title = "DDP gradient accumulation without no_sync()"
    items: ClassVar[tuple[str, ...]] = ("6.8",)
    triggers = Triggers(("DistributedDataParallel", "DDP"))

    def applies(self, ctx: ModuleContext) -> bool:
        return "DistributedDataParallel" in ctx.source or "DDP" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx) or calls_method(ctx, "no_sync", "accumulate"):
            return
        if _sync_controlled(ctx):
            return
        if not any(
            isinstance(n, ast.Call)
            and (ctx.call_qualname(n) or "").endswith("DistributedDataParallel")
            for n in nodes_of(ctx, ast.Call)
        ):
            return
        for loop in ctx.loops.training_loops:
            steps = direct_effects(loop.body).step
            if steps and all(under_modulo_guard(ctx, s, loop.node) for s in steps):
                ctx.report(
                    self,
                    loop.node,
                    "gradients are accumulated under DDP without no_sync(): every micro-batch "
                    "pays a full all-reduce",
                )


def _sync_controlled(ctx: ModuleContext) -> bool:
    """The module skips the all-reduce another way: `getattr(model, "no_sync", ...)()` (the
    form this rule's codemod writes where the model is DDP-wrapped on one branch only), or
    nanoGPT's `model.require_backward_grad_sync = <last micro-step>`, which is what
    `no_sync()` toggles."""
    for node in nodes_of(ctx, ast.Call):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "getattr"
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value == "no_sync"
        ):
            return True
    return any(
        isinstance(target, ast.Attribute) and target.attr == "require_backward_grad_sync"
        for node in nodes_of(ctx, ast.Assign)
        if isinstance(node, ast.Assign)
        for target in node.targets
    )
