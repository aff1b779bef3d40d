"""Loss trajectory, gradient norms, activation magnitudes and the first non-finite value.

Everything here stays on the device during the run (no host sync of our own): values are
kept as 0-d/1-d tensors and read back in one transfer per `flush()`.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeGuard

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch._subclasses.functional_tensor import FunctionalTensor

from torchdoctor.sandbox.probes.tensors import finite, first_float

EXPLODING_NORM = 1e4
EXPLODING_GROWTH = 100.0
VANISHING_NORM = 1e-7
RELU_TYPES = (torch.nn.ReLU, torch.nn.ReLU6)
INF = math.inf
_FLOAT32_MAX = torch.finfo(torch.float32).max


class LossProbe:
    """One loss value per step: the criterion's output that carries a graph, else the tensor
    `backward()` was called on, else the criterion's output computed without grad."""

    def __init__(self) -> None:
        self._criterion: torch.Tensor | None = None
        self._criterion_nograd: torch.Tensor | None = None
        self._backward: list[torch.Tensor] = []
        self._pending: list[tuple[int, str, torch.Tensor]] = []
        self._stacked = False
        """The last `on_device` gave all the waiting losses as one vector."""
        self.values: dict[int, float] = {}
        self.sources: set[str] = set()

    # The kept values are copies: a loss that a CUDA graph (torch.compile's "reduce-overhead")
    # returns lives in a buffer its next replay rewrites, and it is read only at `flush()`.
    def on_criterion(self, value: Any) -> None:
        # only a plain tensor: a loss seen while torch.compile traces it is a fake or
        # functional tensor that cannot be read afterwards (its `backward()` gives the value)
        if _readable(value) and value.numel() == 1 and value.is_floating_point():
            if value.requires_grad:
                self._criterion = value.detach().clone()
            else:
                self._criterion_nograd = value.detach().clone()

    def forget_steps(self) -> None:
        """Drop the losses of the steps so far (an evaluation's, before training starts)."""
        self._pending.clear()
        self.values.clear()

    def on_backward(self, tensor: torch.Tensor) -> None:
        # the step's criterion output, already kept, is the loss its end takes: a copy of
        # the backward's tensor would never be read (one kernel and two dispatches a step)
        if self._criterion is None and _readable(tensor) and tensor.numel() == 1:
            self._backward.append(tensor.detach().clone())

    def end_step(self, step: int) -> None:
        """The step's loss stays as kept (a one-element copy): its shape and dtype are made
        uniform at the flush, in one operation for all the steps waiting."""
        if self._criterion is not None:
            self._pending.append((step, "criterion", self._criterion))
        elif self._backward:
            kept = self._backward
            if len(kept) == 1:
                mean = kept[0].float().mean()
            else:
                mean = torch.stack([b.float().reshape(()) for b in kept]).mean()
            self._pending.append((step, "backward", mean))
        elif self._criterion_nograd is not None:
            self._pending.append((step, "criterion-no-grad", self._criterion_nograd))
        self._criterion = self._criterion_nograd = None
        if self._backward:
            self._backward = []

    def on_device(self) -> list[torch.Tensor]:
        """One vector for all the waiting losses when they share a device and a dtype (the
        usual case), else one per loss."""
        kept = [t for _, _, t in self._pending]
        self._stacked = False
        if not kept:
            return []
        device, dtype = kept[0].device, kept[0].dtype
        if all(t.device == device and t.dtype == dtype for t in kept):
            self._stacked = True
            return [torch.stack([t if t.dim() == 0 else t.reshape(()) for t in kept])]
        return [t.reshape(1) for t in kept]

    def take(self, vectors: list[list[float]]) -> None:
        values = (
            (vectors[0] if vectors else [])
            if self._stacked
            else [vector[0] if vector else float("nan") for vector in vectors]
        )
        for (step, source, _), value in zip(self._pending, values, strict=True):
            self.values[step] = value
            self.sources.add(source)
        self._pending = []

    def report(self) -> dict[str, Any]:
        steps = sorted(self.values)
        series = [self.values[s] for s in steps]
        return {
            "steps": steps,
            "values": [v if finite(v) else None for v in series],
            "nonfinite_steps": [s for s in steps if not finite(self.values[s])],
            "sources": sorted(self.sources),
        }


class ParamGroups(Protocol):
    """What the gradient probe reads of an optimizer: its parameter groups."""

    param_groups: list[dict[str, Any]]


@dataclass
class HandUpdated:
    """The parameters of a loop that updates them by hand, read like an optimizer's."""

    param_groups: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _StepGrads:
    step: int
    optimizer: int
    group_sizes: list[int]
    param_ids: list[int]
    norms: torch.Tensor


@dataclass
class GradientProbe:
    """Per-step global and per-group gradient norms; parameters that never get a gradient;
    parameters that get one but that no optimizer updates."""

    names: dict[int, str] = field(default_factory=dict)
    optimized: dict[int, torch.nn.Parameter] = field(default_factory=dict)
    received: set[int] = field(default_factory=set)
    grad_outside_optimizer: set[int] = field(default_factory=set)
    _pending: list[_StepGrads] = field(default_factory=list)
    global_norms: dict[int, float] = field(default_factory=dict)
    group_norms: dict[int, list[float]] = field(default_factory=dict)
    first_nonfinite: dict[str, Any] | None = None
    optimizers_seen: int = 0
    _optimizer_index: dict[int, int] = field(default_factory=dict)
    _layouts: dict[int, tuple[int, ...]] = field(default_factory=dict)
    _waiting: dict[int, list[torch.nn.Parameter]] = field(default_factory=dict)

    def before_step(self, step: int, optimizer: ParamGroups, norms: bool = True) -> None:
        """Which parameters got a gradient (every step); their norms when `norms` (on sampled
        steps: a norm per parameter and their stacking cost a few hundred microseconds of
        host time, which a launch-bound GPU loop pays in full)."""
        index = self._optimizer_index.setdefault(id(optimizer), len(self._optimizer_index))
        if isinstance(optimizer, torch.optim.Optimizer):
            self.optimizers_seen = len(self._optimizer_index)
        if not norms:
            self._note_received(optimizer)
            return
        grads: list[torch.Tensor] = []
        ids: list[int] = []
        sizes: list[int] = []
        for group in optimizer.param_groups:
            count = 0
            for p in group["params"]:
                self.optimized.setdefault(id(p), p)
                if p.grad is not None:
                    self.received.add(id(p))
                    grads.append(p.grad)
                    ids.append(id(p))
                    count += 1
            sizes.append(count)
        if grads and norms:
            with torch.no_grad():
                each = torch._foreach_norm(grads)
                first = each[0].device
                if all(n.device == first for n in each):
                    stacked = torch.stack(each).float()  # two ops, whatever the model's size
                else:
                    stacked = torch.cat([n.reshape(1).float().to(first) for n in each])
            self._pending.append(_StepGrads(step, index, sizes, ids, stacked))

    def _note_received(self, optimizer: ParamGroups) -> None:
        """Between sampled steps only the parameters still waiting for a first gradient are
        looked at: a pass over every parameter cost 150 us of host time a step on a
        76-tensor model (CPU), paid in full by a launch-bound GPU loop."""
        key = id(optimizer)
        layout = tuple([len(group["params"]) for group in optimizer.param_groups])
        if self._layouts.get(key) != layout:  # a new optimizer, or a group added
            self._layouts[key] = layout
            self._waiting[key] = []
            for group in optimizer.param_groups:
                for p in group["params"]:
                    self.optimized.setdefault(id(p), p)
                    self._waiting[key].append(p)
        still: list[torch.nn.Parameter] = []
        for p in self._waiting[key]:
            if p.grad is not None:
                self.received.add(id(p))
            elif id(p) not in self.received:
                still.append(p)
        self._waiting[key] = still

    def scan_model(self, model: torch.nn.Module) -> None:
        for p in model.parameters():
            if p.grad is not None and id(p) not in self.optimized:
                self.grad_outside_optimizer.add(id(p))

    def on_device(self) -> list[torch.Tensor]:
        return [g.norms for g in self._pending]

    def take(self, vectors: list[list[float]]) -> None:
        for grads, vector in zip(self._pending, vectors, strict=True):
            if self.first_nonfinite is None:
                for pid, value in zip(grads.param_ids, vector, strict=True):
                    if not finite(value):
                        self.first_nonfinite = {
                            "step": grads.step,
                            "parameter": self.names.get(pid, "?"),
                        }
                        break
            if grads.optimizer != 0:
                continue
            position, group_values = 0, []
            for size in grads.group_sizes:
                part = vector[position : position + size]
                position += size
                group_values.append(math.sqrt(sum(v * v for v in part)) if part else 0.0)
            self.group_norms[grads.step] = group_values
            self.global_norms[grads.step] = math.sqrt(sum(v * v for v in vector))
        self._pending = []

    def report(self, steps_completed: int) -> dict[str, Any]:
        steps = sorted(self.global_norms)
        series = [self.global_norms[s] for s in steps]
        finite_series = [v for v in series if finite(v)]
        exploding = any(v > EXPLODING_NORM for v in finite_series) or bool(
            finite_series
            and finite_series[0] > 0
            and max(finite_series) / finite_series[0] > EXPLODING_GROWTH
        )
        vanishing = bool(finite_series) and statistics.median(finite_series) < VANISHING_NORM
        never = (
            [
                self.names.get(pid, "?")
                for pid, p in self.optimized.items()
                if p.requires_grad and pid not in self.received
            ]
            if steps_completed > 0
            else []
        )
        outside = [
            self.names.get(pid, "?")
            for pid in self.grad_outside_optimizer
            if pid not in self.optimized
        ]
        return {
            "steps": steps,
            "global_norm": [v if finite(v) else None for v in series],
            "group_norms": [[v if finite(v) else None for v in self.group_norms[s]] for s in steps],
            "optimizers": self.optimizers_seen,
            "exploding": exploding,
            "vanishing": vanishing,
            "never_received_grad": sorted(never),
            "grad_not_in_optimizer": sorted(outside),
            "first_nonfinite": self.first_nonfinite,
        }


def _magnitude(x: torch.Tensor, order: float) -> torch.Tensor:
    """The vector norm as a float32 scalar, accumulated in float32 (no copy of a half-precision
    tensor). A float64 tensor (an ODE's state, a physics model) cannot be narrowed by the norm
    itself: its norm is taken in float64, then cast, a finite one kept finite."""
    if x.dtype != torch.float64:
        narrow: torch.Tensor = torch.linalg.vector_norm(x, order, dtype=torch.float32)
        return narrow
    norm = torch.linalg.vector_norm(x, order)
    return torch.where(norm.isfinite(), norm.clamp(max=_FLOAT32_MAX), norm).float()


@dataclass
class _ModuleStats:
    calls: int = 0
    mean_abs_sum: float = 0.0
    max_abs: float = 0.0
    dead_sum: float = 0.0
    dead_calls: int = 0
    nonfinite_calls: int = 0


class ForwardWatch:
    """On watched steps: magnitude statistics and a finiteness flag for every module output,
    and for the model's inputs; the first module whose output turns non-finite.

    A watched step reads every module's output, so each read is kept to two reductions on
    the detached tensor (no grad mode to switch, no float copy of a half-precision output):
    the largest magnitude, which is non-finite exactly when some element is, and the sum of
    magnitudes, divided by the element count on the host."""

    def __init__(self) -> None:
        self._pending: list[tuple[int, str, str, int, torch.Tensor]] = []
        self.stats: dict[str, _ModuleStats] = {}
        self.types: dict[str, str] = {}
        self.first_nonfinite: dict[str, Any] | None = None

    def on_input(self, step: int, root_name: str, args: Any) -> None:
        tensor = first_float(args)
        if tensor is not None:
            largest = _magnitude(tensor.detach(), INF)
            self._pending.append((step, f"input of {root_name}", "input", 1, largest.reshape(1)))

    def on_output(self, step: int, name: str, module: torch.nn.Module, output: Any) -> None:
        tensor = first_float(output)
        if tensor is None:
            return
        x = tensor.detach()
        parts = [
            _magnitude(x, INF),
            _magnitude(x, 1),
        ]
        if isinstance(module, RELU_TYPES) and x.dim() >= 2:
            parts.append((x == 0).flatten(1).all(dim=0).float().mean())
        self.types.setdefault(name, type(module).__name__)
        self._pending.append((step, name, "forward", x.numel(), torch.stack(parts)))

    @property
    def waiting(self) -> int:
        """Statistics not read back yet."""
        return len(self._pending)

    def on_device(self) -> list[torch.Tensor]:
        return [s for *_, s in self._pending]

    def take(self, vectors: list[list[float]]) -> None:
        for (step, name, phase, numel, _), values in zip(self._pending, vectors, strict=True):
            max_abs = values[0]
            if not finite(max_abs) and self.first_nonfinite is None:
                self.first_nonfinite = {"step": step, "phase": phase, "module": name}
            if phase == "input":
                continue
            mean_abs = values[1] / numel
            entry = self.stats.setdefault(name, _ModuleStats())
            entry.calls += 1
            entry.nonfinite_calls += int(not finite(max_abs))
            if finite(mean_abs):
                entry.mean_abs_sum += mean_abs
            if finite(max_abs):
                entry.max_abs = max(entry.max_abs, max_abs)
            if len(values) > 2:
                entry.dead_sum += values[2]
                entry.dead_calls += 1
        self._pending = []

    def report(self) -> list[dict[str, Any]]:
        return [
            {
                "module": name,
                "type": self.types.get(name, "?"),
                "calls_sampled": s.calls,
                "mean_abs": s.mean_abs_sum / s.calls if s.calls else 0.0,
                "max_abs": s.max_abs,
                "dead_fraction": s.dead_sum / s.dead_calls if s.dead_calls else None,
                "nonfinite_calls": s.nonfinite_calls,
            }
            for name, s in self.stats.items()
        ]


def _readable(value: Any) -> TypeGuard[torch.Tensor]:
    """A tensor that holds values: not one of a tracer's (fake or functional)."""
    if type(value) is torch.Tensor:  # the loss of every step: no subclass checks
        return True
    return isinstance(value, torch.Tensor) and not isinstance(value, FakeTensor | FunctionalTensor)
