"""pin-memory-off: CUDA training from pageable host memory."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.vocabulary import DATALOADERS
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.patterns import (
    has_star_kwargs,
    is_false,
    kwarg,
    terminal_name,
    uses_cuda,
)
from torchdoctor.agent.models import Severity


class PinMemoryOff(Rule):
    """Detects a `DataLoader` without `pin_memory=True` (absent or False) in a module that
    trains on a CUDA device.

    Why it matters: host-to-device copies from pageable memory are staged through a pinned
    buffer by the driver and cannot overlap with compute; with pinned batches and
    `.to(device, non_blocking=True)` the copy runs asynchronously while the GPU works.

    Example:
        loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=4)
        for x, y in loader:
            x = x.cuda()

    Fix: `DataLoader(..., pin_memory=True)` and `x.to(device, non_blocking=True)`.
    """

    id = "pin-memory-off"
    point = 6
    severity = Severity.LOW
    title = "DataLoader without pinned memory"
    items: ClassVar[tuple[str, ...]] = ("6.6",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset({"DataLoader"})
    visit_gate: ClassVar[tuple[str, ...]] = ("DataLoader",)

    def __init__(self) -> None:
        self.candidates: list[ast.Call] = []

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if terminal_name(node.func) != "DataLoader" or not uses_cuda(ctx):
            return
        if ctx.call_qualname(node) not in DATALOADERS or has_star_kwargs(node):
            return
        pin = kwarg(node, "pin_memory")
        if pin is None or is_false(pin):
            self.candidates.append(node)

    def finish(self, ctx: ModuleContext) -> None:
        if not self.candidates or not ctx.loops.training_loops:
            return
        for node in self.candidates:
            ctx.report(
                self,
                node,
                "batches are copied to the GPU from pageable memory: pin_memory=True lets the "
                "copy overlap with compute",
            )
