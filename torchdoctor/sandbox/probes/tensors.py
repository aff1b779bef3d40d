"""Small tensor helpers shared by the probes: find tensors in outputs, read scalars in one go."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Protocol

import torch

_cuda_seen_in_use = False
"""Once initialised, CUDA stays so for the process (a forked child starts over)."""
_cuda_available: bool | None = None
"""`torch.cuda.is_available()`, asked once: a CPU-only run asks `cuda_in_use()` twice a step."""


def _forget_cuda() -> None:
    global _cuda_seen_in_use, _cuda_available
    _cuda_seen_in_use = False
    _cuda_available = None


os.register_at_fork(after_in_child=_forget_cuda)


def cuda_in_use() -> bool:
    """CUDA is available and the script has initialised it (no probe initialises it).
    Asked several times a step, so a yes is remembered, and whether CUDA is there at all."""
    global _cuda_seen_in_use, _cuda_available
    if _cuda_seen_in_use:
        return True
    if _cuda_available is None:
        _cuda_available = torch.cuda.is_available()
    if not _cuda_available:
        return False
    _cuda_seen_in_use = bool(torch.cuda.is_initialized())  # type: ignore[no-untyped-call]
    return _cuda_seen_in_use


def tensors_in(obj: Any, limit: int = 8) -> list[torch.Tensor]:
    """Tensors directly inside `obj` (a tensor, or a tuple/list/dict one level deep)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    found: list[torch.Tensor] = []
    items: Sequence[Any]
    if isinstance(obj, dict):
        items = list(obj.values())
    elif isinstance(obj, list | tuple):
        items = obj
    else:
        return found
    for item in items:
        if isinstance(item, torch.Tensor):
            found.append(item)
            if len(found) >= limit:
                break
    return found


def first_float(obj: Any) -> torch.Tensor | None:
    for t in tensors_in(obj):
        if t.is_floating_point() and t.numel() > 0:
            return t
    return None


def describe(t: torch.Tensor) -> dict[str, Any]:
    return {
        "shape": list(t.shape),
        "dtype": str(t.dtype).removeprefix("torch."),
        "device": str(t.device),
    }


def read_vectors(values: Sequence[torch.Tensor]) -> list[list[float]]:
    """Host copies of 1-d device tensors, one transfer per device. A flush reads a few hundred
    of them: those already flat, float32 and out of autograd are concatenated as they are."""
    if not values:
        return []
    by_device: dict[torch.device, list[int]] = {}
    for index, value in enumerate(values):
        by_device.setdefault(value.device, []).append(index)
    out: list[list[float]] = [[] for _ in values]
    for indices in by_device.values():
        flat = torch.cat([_flat_float(values[i]) for i in indices])
        host = flat.cpu().tolist()
        position = 0
        for i in indices:
            size = values[i].numel()
            out[i] = host[position : position + size]
            position += size
    return out


def _flat_float(value: torch.Tensor) -> torch.Tensor:
    if value.dim() == 1 and value.dtype == torch.float32 and not value.requires_grad:
        return value
    return value.detach().reshape(-1).float()


def finite(value: float) -> bool:
    return value == value and value not in (float("inf"), float("-inf"))


class DeviceReads(Protocol):
    """A probe that keeps values on the device between flushes."""

    def on_device(self) -> list[torch.Tensor]:
        """The 1-d tensors waiting to be read, in order."""
        ...

    def take(self, vectors: list[list[float]]) -> None:
        """Their host values (as `on_device` listed them); nothing is waiting afterwards."""
        ...


def read_together(probes: Sequence[DeviceReads]) -> None:
    """Every probe's waiting values in one transfer (one host sync) per device, rather than
    one per probe: each sync stalls a loop whose GPU runs behind its host."""
    groups = [probe.on_device() for probe in probes]
    vectors = read_vectors([tensor for group in groups for tensor in group])
    start = 0
    for probe, group in zip(probes, groups, strict=True):
        probe.take(vectors[start : start + len(group)])
        start += len(group)
