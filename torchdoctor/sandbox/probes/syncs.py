"""Host-device synchronisations made by the user's code (item 6.1).

Everywhere: `.item()`, `.cpu()`, `.numpy()` and `.tolist()` are wrapped, and each call whose
caller is a user file is counted per step and per line. These are host syncs on a GPU and
per-element Python work on a CPU. On CUDA the harness also turns on
`torch.cuda.set_sync_debug_mode("warn")` and attributes each warning to the user's line.
"""

from __future__ import annotations

import statistics
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

from torchdoctor.sandbox.probes.frames import UserFiles
from torchdoctor.sandbox.probes.tensors import cuda_in_use

SYNC_METHODS = ("item", "cpu", "numpy", "tolist")
SUSPENDED_METHODS = ("item",)
"""What a built-in optimizer's step calls, per parameter (`.item()` of each step count): the
plain method while that step runs. The others stay wrapped through it (a call from library
code costs the wrapper one dict lookup), so a step swaps one class attribute twice, not four:
each swap invalidates the attribute caches of `torch.Tensor` and of all its subclasses."""


class SyncProbe:
    def __init__(self, user_files: UserFiles) -> None:
        self.user_files = user_files
        self.by_line: Counter[tuple[str, int, str]] = Counter()
        self.per_step: Counter[int] = Counter()
        self.cuda_by_line: Counter[tuple[str, int]] = Counter()
        self.cuda_per_step: Counter[int] = Counter()
        self.step = 0
        self._originals: dict[str, Callable[..., Any]] = {}
        self._wrappers: dict[str, Callable[..., Any]] = {}
        self.suspended = False
        self.cuda_mode = False

    def install(self) -> None:
        for method in SYNC_METHODS:
            original = getattr(torch.Tensor, method)
            self._originals[method] = original
            self._wrappers[method] = self._wrap(method, original)
        for method, wrapper in self._wrappers.items():
            setattr(torch.Tensor, method, wrapper)
        self.suspended = False

    def suspend(self) -> None:
        """The plain `SUSPENDED_METHODS` while library code runs whose calls are never the
        user's line: a built-in optimizer's step calls `.item()` on each parameter's step
        count."""
        for method in SUSPENDED_METHODS:
            original = self._originals.get(method)
            if original is not None:
                setattr(torch.Tensor, method, original)
        self.suspended = True

    def resume(self) -> None:
        for method in SUSPENDED_METHODS:
            wrapper = self._wrappers.get(method)
            if wrapper is not None:
                setattr(torch.Tensor, method, wrapper)
        self.suspended = False

    def uninstall(self, touch_cuda: bool = True) -> None:
        for method, original in self._originals.items():
            setattr(torch.Tensor, method, original)
        self.suspended = True
        self._originals, self._wrappers = {}, {}
        if touch_cuda:
            self.set_cuda_mode(False)

    def _wrap(self, method: str, original: Callable[..., Any]) -> Callable[..., Any]:
        contains = self.user_files.contains
        known = self.user_files.known
        relpath = self.user_files.relpath
        by_line, per_step = self.by_line, self.per_step

        def wrapper(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            # called per parameter by foreach optimizers (`.item()` of each step count):
            # a file already classified costs one dict lookup, no further call
            frame = sys._getframe(1)
            filename = frame.f_code.co_filename
            mine = known.get(filename)
            if mine is None:
                mine = contains(filename)
            if mine:
                by_line[(relpath(filename), frame.f_lineno, method)] += 1
                per_step[self.step] += 1
            return original(tensor, *args, **kwargs)

        wrapper.__name__ = method
        wrapper.__doc__ = original.__doc__
        return wrapper

    def set_cuda_mode(self, on: bool) -> None:
        """Toggle CUDA's sync debug mode; the harness turns it off around its own reads."""
        if cuda_in_use():
            torch.cuda.set_sync_debug_mode("warn" if on else 0)
            self.cuda_mode = on

    def on_cuda_warning(self) -> None:
        location = self.user_files.caller(skip=2)
        if location is not None:
            self.cuda_by_line[(location.file, location.line)] += 1
            self.cuda_per_step[self.step] += 1

    def report(self, steps_completed: int) -> dict[str, Any]:
        # The median step, not the mean: an evaluation every N steps (dozens of `.cpu()` reads
        # over a validation set on one step of the few measured) is not a sync on every step.
        counted = [s for s in range(1, steps_completed)]
        per_step = (
            float(statistics.median(self.per_step[s] for s in counted))
            if counted
            else (float(self.per_step[0]) if steps_completed else 0.0)
        )
        cuda_per_step = (
            float(statistics.median(self.cuda_per_step[s] for s in counted)) if counted else 0.0
        )
        return {
            "per_step": per_step,
            "calls": [
                {"file": f, "line": line, "kind": kind, "count": count}
                for (f, line, kind), count in self.by_line.most_common(50)
            ],
            "cuda_sync_debug": self.cuda_mode or bool(self.cuda_by_line),
            "cuda_syncs_per_step": cuda_per_step,
            "cuda_syncs": [
                {"file": f, "line": line, "count": count}
                for (f, line), count in self.cuda_by_line.most_common(50)
            ],
        }
