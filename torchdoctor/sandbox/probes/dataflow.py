"""The module-by-module data-flow map of one step: input and output shapes, dtypes and
devices in call order (item 1.3), and the dtype mixing visible in it (item 1.5)."""

from __future__ import annotations

from typing import Any

import torch

from torchdoctor.sandbox.probes.tensors import describe, tensors_in

MAX_CALLS = 400


class DataFlowProbe:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.truncated = False
        self.step: int | None = None
        self._open: dict[int, list[int]] = {}

    def on_enter(
        self, step: int, depth: int, name: str, module: torch.nn.Module, args: Any
    ) -> None:
        if len(self.calls) >= MAX_CALLS:
            self.truncated = True
            return
        self.step = step
        own = [p for p in module.parameters(recurse=False)]
        self.calls.append(
            {
                "index": len(self.calls),
                "module": name,
                "type": type(module).__name__,
                "depth": depth,
                "inputs": [describe(t) for t in tensors_in(args)],
                "outputs": [],
                "param_dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in own}),
                "autocast": torch.is_autocast_enabled(),
                "grad_enabled": torch.is_grad_enabled(),
            }
        )
        self._open.setdefault(id(module), []).append(len(self.calls) - 1)

    def on_exit(self, module: torch.nn.Module, output: Any) -> None:
        stack = self._open.get(id(module))
        if stack:
            self.calls[stack.pop()]["outputs"] = [describe(t) for t in tensors_in(output)]

    def dtype_mixing(self) -> list[dict[str, Any]]:
        """Calls whose floating inputs disagree with each other or with the module's own
        parameters outside autocast, and any float64 tensor."""
        found: list[dict[str, Any]] = []
        for call in self.calls:
            floats = {
                t["dtype"] for t in call["inputs"] if t["dtype"].startswith(("float", "bfloat"))
            }
            params = {d for d in call["param_dtypes"] if d.startswith(("float", "bfloat"))}
            reasons: list[str] = []
            if len(floats) > 1:
                reasons.append(f"inputs mix {sorted(floats)}")
            if floats and params and not call["autocast"] and floats != params:
                reasons.append(f"inputs {sorted(floats)} vs parameters {sorted(params)}")
            if "float64" in floats | params:
                reasons.append("float64 tensors")
            if reasons:
                found.append(
                    {"module": call["module"], "type": call["type"], "reason": "; ".join(reasons)}
                )
        return found

    def report(self) -> dict[str, Any]:
        return {"step": self.step, "calls": self.calls, "truncated": self.truncated}
