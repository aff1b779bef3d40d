"""The module-by-module data-flow map of one step: input and output shapes, dtypes and
devices in call order (item 1.3), and the dtype mixing visible in it (item 1.5).

Call order alone cannot tell siblings that run one after the other (a head and an auxiliary
head) from a chain, nor show residual adds. So during the mapped forward a function mode
tracks which module calls each tensor derives from: every call records the calls that produced
its inputs (`sources`) and its output (`output_sources`), and the renderer draws real edges and
merges from that.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from torchdoctor.sandbox.probes.tensors import describe, tensors_in

MAX_CALLS = 400
EXTERNAL = -1
"""Provenance of tensors that entered a mapped forward from outside any module (the data)."""


def _autocast_devices() -> tuple[str, ...]:
    """The device types this torch can autocast (asking about another one raises)."""
    found = []
    for device in ("cuda", "cpu", "xpu", "mps", "hpu"):
        try:
            torch.is_autocast_enabled(device)
        except RuntimeError:
            continue
        found.append(device)
    return tuple(found)


_AUTOCAST_DEVICES = _autocast_devices()


def autocast_on() -> bool:
    """Whether autocast is on for any device type: `torch.is_autocast_enabled()` without one
    answers for CUDA only, so a CPU bf16 autocast region's Linear (bf16 inputs, float32
    weights: what autocast is for) was reported as dtype mixing."""
    return any(torch.is_autocast_enabled(device) for device in _AUTOCAST_DEVICES)


class _Provenance(TorchFunctionMode):
    """Propagates "derived from module calls" sets through every torch function of a forward."""

    def __init__(self, probe: DataFlowProbe) -> None:
        super().__init__()
        self.probe = probe

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if not torch.compiler.is_compiling():
            try:
                sources, _ = self.probe.derived_from(list(args) + list((kwargs or {}).values()))
                if sources:
                    self.probe.mark(out, sources, replace=False)
            except Exception:
                pass
        return out


class DataFlowProbe:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.truncated = False
        self.step: int | None = None
        self._open: dict[int, list[int]] = {}
        self._stack: list[int] = []
        self._origin: dict[int, tuple[weakref.ref[torch.Tensor], frozenset[int]]] = {}
        self._mode: _Provenance | None = None

    # --- provenance -------------------------------------------------------------------------

    def derived_from(self, obj: Any) -> tuple[frozenset[int], bool]:
        """The provenance of the tensors in `obj` (EXTERNAL included), and whether some tensor
        has none (a parameter, a buffer, a tensor made inside the forward)."""
        found: set[int] = set()
        untracked = False
        for t in tensors_in(obj, limit=16):
            entry = self._origin.get(id(t))
            if entry is not None and entry[0]() is t:
                found |= entry[1]
            else:
                untracked = True
        return frozenset(found), untracked

    def sources_of(self, obj: Any) -> tuple[frozenset[int], bool]:
        """The calls the tensors in `obj` derive from, and whether some came from outside."""
        found, untracked = self.derived_from(obj)
        return found - {EXTERNAL}, untracked or EXTERNAL in found

    def mark(self, obj: Any, sources: frozenset[int], *, replace: bool) -> None:
        for t in tensors_in(obj, limit=16):
            entry = self._origin.get(id(t))
            if not replace and entry is not None and entry[0]() is t:
                sources = sources | entry[1]
            self._origin[id(t)] = (weakref.ref(t), sources)

    def _start_tracking(self, module: torch.nn.Module) -> None:
        if self._mode is not None or type(module).__name__ == "OptimizedModule":
            return  # a compiled model is traced by dynamo: no function mode around it
        self._mode = _Provenance(self)
        self._mode.__enter__()  # type: ignore[no-untyped-call]

    def stop(self) -> None:
        """Leave the function mode (at the root's exit, or at the end of the step if the
        forward raised before its exit hook ran)."""
        if self._mode is not None:
            mode, self._mode = self._mode, None
            mode.__exit__(None, None, None)  # type: ignore[no-untyped-call]
        self._origin.clear()

    # --- module hooks -----------------------------------------------------------------------

    def on_enter(
        self, step: int, depth: int, name: str, module: torch.nn.Module, args: Any
    ) -> None:
        if len(self.calls) >= MAX_CALLS:
            self.truncated = True
            return
        if depth == 0:
            self._start_tracking(module)
        self.step = step
        own = [p for p in module.parameters(recurse=False)]
        sources, external = self.sources_of(args)
        for t in tensors_in(args, limit=16):
            if id(t) not in self._origin or self._origin[id(t)][0]() is not t:
                self.mark(t, frozenset({EXTERNAL}), replace=True)
        index = len(self.calls)
        self.calls.append(
            {
                "index": index,
                "module": name,
                "type": type(module).__name__,
                "depth": depth,
                "parent": self._stack[-1] if self._stack else None,
                "inputs": [describe(t) for t in tensors_in(args)],
                "outputs": [],
                "sources": sorted(sources),
                "external": external,
                "output_sources": [],
                "output_external": False,
                "end": index,
                "param_dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in own}),
                "autocast": autocast_on(),
                "grad_enabled": torch.is_grad_enabled(),
            }
        )
        self._open.setdefault(id(module), []).append(index)
        self._stack.append(index)

    def on_exit(self, module: torch.nn.Module, output: Any) -> None:
        stack = self._open.get(id(module))
        if not stack:
            return
        index = stack.pop()
        call = self.calls[index]
        call["outputs"] = [describe(t) for t in tensors_in(output)]
        sources, external = self.sources_of(output)
        call["output_sources"] = sorted(sources)
        call["output_external"] = external
        call["end"] = len(self.calls) - 1
        self.mark(output, frozenset({index}), replace=True)
        if index in self._stack:
            del self._stack[self._stack.index(index) :]
        if not self._stack:
            self.stop()

    def dtype_mixing(self) -> list[dict[str, Any]]:
        """Modules whose floating inputs disagree with each other or with the module's own
        parameters outside autocast, and any float64 tensor, each once. A 0-dim input is left
        out: type promotion never lets it widen a tensor of the same kind, and a float64
        scalar (the time torchdiffeq hands the function it integrates) is cast at use."""
        found: list[dict[str, Any]] = []
        for call in self.calls:
            floats = {
                t["dtype"]
                for t in call["inputs"]
                if t["dtype"].startswith(("float", "bfloat")) and t["shape"]
            }
            params = {d for d in call["param_dtypes"] if d.startswith(("float", "bfloat"))}
            reasons: list[str] = []
            if len(floats) > 1:
                reasons.append(f"inputs mix {sorted(floats)}")
            if floats and params and not call["autocast"] and floats != params:
                reasons.append(f"inputs {sorted(floats)} vs parameters {sorted(params)}")
            if "float64" in floats | params:
                reasons.append("float64 tensors")
            entry = {"module": call["module"], "type": call["type"], "reason": "; ".join(reasons)}
            if reasons and entry not in found:
                found.append(entry)
        return found

    def report(self) -> dict[str, Any]:
        return {"step": self.step, "calls": self.calls, "truncated": self.truncated}
