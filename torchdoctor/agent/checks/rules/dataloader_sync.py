"""dataloader-sync: batches are loaded in the training process."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.vocabulary import DATALOADERS
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.patterns import (
    argument,
    constant_number,
    has_star_kwargs,
    terminal_name,
)
from torchdoctor.agent.models import Severity


class DataLoaderSync(Rule):
    """Detects a `DataLoader` without worker processes (`num_workers` absent or 0), TorchFix
    TOR401. Opt-in: for in-memory tensor datasets, tests and Windows notebooks, workers cost
    more than they save.

    Why it matters: loading, decoding and augmenting each batch then runs in the training
    process, between steps, so the GPU waits for the CPU on every batch (the profiler's
    SynchronizedDataLoaderPattern).

    Example:
        loader = DataLoader(ImageFolder(root, transform), batch_size=64, shuffle=True)

    Fix: `DataLoader(..., num_workers=min(8, os.cpu_count()), pin_memory=True,
    persistent_workers=True)` and measure.
    """

    id = "dataloader-sync"
    point = 6
    severity = Severity.LOW
    title = "DataLoader without workers"
    items: ClassVar[tuple[str, ...]] = ("6.6",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    tier = "opt-in"

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if terminal_name(node.func) != "DataLoader" or has_star_kwargs(node):
            return
        if ctx.call_qualname(node) not in DATALOADERS:
            return
        workers = argument(node, "num_workers", 5)
        if workers is None or constant_number(workers) == 0:
            ctx.report(
                self,
                node,
                "batches are loaded in the training process (num_workers=0): the GPU waits "
                "for every batch",
            )
