"""The root model's forward signatures over the whole run: the distinct shapes and dtypes of
its tensor arguments and results, per model class. The data-flow map holds one step; these
show what changes between steps (a last partial batch, sequences padded to each batch's
longest), so generated annotations and checks keep those dimensions symbolic."""

from __future__ import annotations

from typing import Any

import torch

from torchdoctor.sandbox.probes.tensors import describe, tensors_in

MAX_SIGNATURES = 16
"""Distinct signatures kept per model class (the first ones seen)."""
MAX_MODELS = 4


Signature = tuple[tuple[tuple[torch.Size, torch.dtype, torch.device], ...], ...]


def _signature(inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> Signature:
    """Hashable without building strings or generators: a root forward runs every step."""
    return (
        tuple([(t.shape, t.dtype, t.device) for t in inputs]),
        tuple([(t.shape, t.dtype, t.device) for t in outputs]),
    )


class RootShapes:
    def __init__(self) -> None:
        self.seen: dict[str, dict[Signature, dict[str, Any]]] = {}

    def observe(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        name = type(module).__name__
        table = self.seen.get(name)
        if table is None:
            if len(self.seen) >= MAX_MODELS:
                return
            table = self.seen[name] = {}
        inputs, outputs = tensors_in(args), tensors_in(output)
        key = _signature(inputs, outputs)
        if key in table:
            table[key]["calls"] += 1
        elif len(table) < MAX_SIGNATURES:
            table[key] = {
                "type": name,
                "inputs": [describe(t) for t in inputs],
                "outputs": [describe(t) for t in outputs],
                "calls": 1,
            }

    def report(self) -> list[dict[str, Any]]:
        return [signature for table in self.seen.values() for signature in table.values()]
