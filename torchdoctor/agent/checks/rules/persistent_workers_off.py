"""persistent-workers-off: DataLoader workers are re-spawned every epoch."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.vocabulary import DATALOADERS
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import (
    argument,
    constant_number,
    has_star_kwargs,
    kwarg,
    source_has,
    terminal_name,
)
from torchdoctor.agent.models import Severity


class PersistentWorkersOff(Rule):
    """Detects a `DataLoader` with worker processes (`num_workers` not 0) and no
    `persistent_workers=True`, in a module that iterates over epochs.

    Why it matters: without it, every epoch tears the worker processes down and starts new
    ones, re-importing modules and re-building each worker's copy of the dataset: a stall at
    the start of every epoch (seconds to minutes with large datasets) while the GPU idles.

    Example:
        loader = DataLoader(ds, batch_size=64, num_workers=8)
        for epoch in range(100):
            for x, y in loader: ...

    Fix: `DataLoader(..., num_workers=8, persistent_workers=True)`.
    """

    id = "persistent-workers-off"
    point = 6
    severity = Severity.LOW
    title = "DataLoader workers not persistent"
    items: ClassVar[tuple[str, ...]] = ("6.6",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset({"DataLoader"})
    triggers = Triggers(("DataLoader",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if terminal_name(node.func) != "DataLoader" or not source_has(ctx, "epoch"):
            return
        if ctx.call_qualname(node) not in DATALOADERS or has_star_kwargs(node):
            return
        workers = argument(node, "num_workers", 5)
        if workers is None or constant_number(workers) == 0:
            return
        if kwarg(node, "persistent_workers") is None:
            ctx.report(
                self,
                node,
                "worker processes are restarted every epoch: persistent_workers=True keeps "
                "them alive",
            )
