"""checkpoint-use-reentrant: activation checkpointing without an explicit `use_reentrant`."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import kwarg
from torchdoctor.agent.models import Severity

_CHECKPOINT = frozenset(
    {"torch.utils.checkpoint.checkpoint", "torch.utils.checkpoint.checkpoint_sequential"}
)


class CheckpointUseReentrant(Rule):
    """Detects `torch.utils.checkpoint.checkpoint(...)` / `checkpoint_sequential(...)` called
    without `use_reentrant=` (and without `**kwargs` that could carry it).

    Why it matters: PyTorch warns when the argument is omitted and plans to change its
    default. The reentrant variant does not support inputs without `requires_grad` (the
    checkpointed block then gets no gradient, silently), nested structures or
    `torch.autograd.grad`; the non-reentrant one is the recommended mode.

    Example:
        h = checkpoint(self.block, h)

    Fix: `checkpoint(self.block, h, use_reentrant=False)`.
    """

    id = "checkpoint-use-reentrant"
    point = 1
    severity = Severity.MEDIUM
    title = "checkpoint without use_reentrant"
    items: ClassVar[tuple[str, ...]] = ("1.6",)

    def applies(self, ctx: ModuleContext) -> bool:
        return "checkpoint" in ctx.source and ctx.flow.imports("torch")

    def finish(self, ctx: ModuleContext) -> None:
        if "checkpoint" in ctx.source:
            for node in ctx.flow.calls_to(_CHECKPOINT):
                self._check(ctx, node)

    def _check(self, ctx: ModuleContext, node: ast.Call) -> None:
        if ctx.flow.qualname_of(node) not in _CHECKPOINT:
            return
        if kwarg(node, "use_reentrant") is not None or any(k.arg is None for k in node.keywords):
            return
        ctx.report(
            self,
            node,
            "activation checkpointing without use_reentrant=: pass use_reentrant=False "
            "(the recommended, non-reentrant implementation)",
        )
