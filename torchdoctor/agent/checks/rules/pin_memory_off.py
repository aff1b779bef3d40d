"""pin-memory-off: CUDA training from pageable host memory."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.vocabulary import DATALOADERS
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_tree
from torchdoctor.agent.checks.module_text import Triggers
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

    Not reported: a loader over indices (`DataLoader(torch.LongTensor(range(20)),
    batch_size=1)`, `DataLoader(range(n))`, `DataLoader(train_mask.nonzero().view(-1))`):
    its batches are the indices of examples the step
    gathers from tensors already loaded, a few bytes that pinning does not speed up. Nor a
    loader whose `collate_fn` (or a local function it calls) builds the batch on the device
    (`torch.tensor(ids, device=device)`, `.to(device)`): its batches reach the GPU in the
    collate, and pinning a CUDA tensor raises.

    Fix: `DataLoader(..., pin_memory=True)` and `x.to(device, non_blocking=True)`.
    """

    id = "pin-memory-off"
    point = 6
    severity = Severity.LOW
    title = "DataLoader without pinned memory"
    items: ClassVar[tuple[str, ...]] = ("6.6",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset({"DataLoader"})
    triggers = Triggers(("DataLoader",))

    def __init__(self) -> None:
        self.candidates: list[ast.Call] = []

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if terminal_name(node.func) != "DataLoader" or not uses_cuda(ctx):
            return
        if ctx.call_qualname(node) not in DATALOADERS or has_star_kwargs(node):
            return
        pin = kwarg(node, "pin_memory")
        if pin is not None and not is_false(pin):
            return
        if not _over_indices(ctx, node) and not _collated_on_device(ctx, node):
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


def _collated_on_device(ctx: ModuleContext, loader: ast.Call) -> bool:
    """The loader's `collate_fn`, a function of this module, or one it calls, places tensors
    on a device: a factory given `device=`, or `.to(...)` / `.cuda()` (the Annotated
    Transformer's `collate_fn` closure calling `collate_batch(batch, ..., device)`)."""
    collate = kwarg(loader, "collate_fn")
    if not isinstance(collate, ast.Name):
        return False
    functions = list(ctx.flow.functions.get(collate.id, ()))
    for fn in list(functions):
        for node in walk_tree(fn):
            if isinstance(node, ast.Call):
                functions += [f for f in ctx.calls.resolve(node) if f not in functions]
    return any(_places_on_device(node) for fn in functions for node in walk_tree(fn))


def _places_on_device(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    if any(k.arg == "device" for k in node.keywords):
        return True
    return isinstance(node.func, ast.Attribute) and node.func.attr in ("to", "cuda")


_INDEX_BUILDERS = frozenset({"torch.arange", "torch.LongTensor", "torch.tensor", "list", "range"})


def _over_indices(ctx: ModuleContext, loader: ast.Call) -> bool:
    """The loader's dataset is a range of integers: `range(n)`, `torch.arange(n)`, a
    `torch.LongTensor`/`torch.tensor`/`list` of a `range`, or the positions of a mask
    (`mask.nonzero().view(-1)`), directly or through a name bound only to one."""
    dataset = loader.args[0] if loader.args else kwarg(loader, "dataset")
    if dataset is None:
        return False
    values = ctx.flow.definitions(dataset) if isinstance(dataset, ast.Name) else [dataset]
    return bool(values) and all(_index_range(ctx, v) for v in values)


_RESHAPES = frozenset({"view", "reshape", "flatten", "squeeze", "long"})


def _index_range(ctx: ModuleContext, value: ast.AST) -> bool:
    if not isinstance(value, ast.Call):
        return False
    func = value.func
    while (  # `mask.nonzero(as_tuple=False).view(-1)`: the positions of a mask
        isinstance(func, ast.Attribute)
        and func.attr in _RESHAPES
        and isinstance(func.value, ast.Call)
    ):
        func = func.value.func
    if isinstance(func, ast.Attribute) and func.attr == "nonzero":
        return True
    name = ctx.call_qualname(value) or terminal_name(value.func)
    if name not in _INDEX_BUILDERS:
        return False
    if name in ("range", "torch.arange"):
        return True
    return len(value.args) == 1 and _index_range(ctx, value.args[0])
