"""Inference code paths left in training mode, and evaluation that builds autograd graphs
(item 7.4).

Two observations, both on top-level (root) module calls only:
- a forward under `no_grad`/`inference_mode` while the module is in training mode and
  contains dropout or batch-norm layers: the results are noisy and BN statistics drift;
- a forward of a module in eval mode with autograd enabled whose graph no backward consumes
  before the same module runs again: an evaluation that pays for a graph it never uses.
"""

from __future__ import annotations

from typing import Any

import torch

from torchdoctor.sandbox.probes.frames import Location, UserFiles

_MODE_SENSITIVE = (
    torch.nn.modules.dropout._DropoutNd,
    torch.nn.modules.batchnorm._BatchNorm,
)


class ModeProbe:
    def __init__(self, user_files: UserFiles) -> None:
        self.user_files = user_files
        self._sensitive: dict[int, bool] = {}
        self._pending: dict[int, tuple[str, Location | None]] = {}
        self.issues: dict[tuple[str, str, str | None, int | None], int] = {}

    def _is_sensitive(self, module: torch.nn.Module) -> bool:
        known = self._sensitive.get(id(module))
        if known is None:
            known = any(isinstance(m, _MODE_SENSITIVE) for m in module.modules())
            self._sensitive[id(module)] = known
        return known

    def _add(self, kind: str, name: str, location: Location | None) -> None:
        key = (kind, name, location.file if location else None, location.line if location else None)
        self.issues[key] = self.issues.get(key, 0) + 1

    def on_root_forward(
        self, name: str, module: torch.nn.Module, where: Location | None = None
    ) -> None:
        """`where`: the call's place when the stack does not show it (a direct forward)."""
        pending = self._pending.pop(id(module), None)
        if pending is not None:
            self._add("eval-with-grad", pending[0], pending[1])
        no_grad = not torch.is_grad_enabled() or torch.is_inference_mode_enabled()
        if no_grad and module.training and self._is_sensitive(module):
            place = where or self.user_files.caller(skip=3)
            self._add("train-mode-at-inference", name, place)

    def on_root_output(
        self, name: str, module: torch.nn.Module, output: Any, where: Location | None = None
    ) -> None:
        if module.training or not torch.is_grad_enabled():
            return
        tensors = [output] if isinstance(output, torch.Tensor) else []
        if any(t.requires_grad for t in tensors):
            self._pending[id(module)] = (name, where or self.user_files.caller(skip=3))

    def on_backward(self) -> None:
        self._pending.clear()

    def report(self) -> list[dict[str, Any]]:
        return [
            {"kind": kind, "module": name, "file": f, "line": line, "count": count}
            for (kind, name, f, line), count in self.issues.items()
        ]
