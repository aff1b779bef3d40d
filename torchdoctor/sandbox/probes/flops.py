"""FLOPs of one step counted by `FlopCounterMode`, turned into achieved TFLOP/s and MFU
against the GPU's dense bf16 peak (item 8.1)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch.utils.flop_counter import FlopCounterMode

from torchdoctor.sandbox.probes.gpu_peaks import peak_tflops
from torchdoctor.sandbox.probes.tensors import cuda_in_use


class _TotalOnly:
    """FlopCounterMode's module tracker reduced to the total this probe reads. The real one
    puts multi-grad hooks on every module's inputs and outputs, which raise inside the
    script's own `autograd.grad` of a leaf (a WGAN-GP gradient penalty: "A leaf node was
    passed to _will_engine_execute_node"): the harness alone made such a script fail."""

    parents = frozenset({"Global"})
    is_bw = False

    def __enter__(self) -> _TotalOnly:
        return self

    def __exit__(self, *args: object) -> None:
        return None


class FlopProbe:
    def __init__(self) -> None:
        self._mode: FlopCounterMode | None = None
        self.flops: int | None = None
        self.step: int | None = None
        self.error: str | None = None

    @property
    def active(self) -> bool:
        return self._mode is not None

    def start(self, step: int) -> None:
        from torch.utils.flop_counter import FlopCounterMode  # heavy import: only when used

        try:
            self._mode = FlopCounterMode(display=False)
            if hasattr(self._mode, "mod_tracker"):
                self._mode.mod_tracker = _TotalOnly()  # type: ignore[assignment]
            self._mode.__enter__()  # type: ignore[no-untyped-call]
            self.step = step
        except Exception as exc:
            self._mode = None
            self.error = f"{type(exc).__name__}: {exc}"

    def stop(self) -> None:
        if self._mode is None:
            return
        mode, self._mode = self._mode, None
        try:
            mode.__exit__(None, None, None)  # type: ignore[no-untyped-call]
            self.flops = int(mode.get_total_flops())
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"

    def reset(self) -> None:
        """Drop a count in progress (the step it measured is being renumbered)."""
        self.stop()
        self.flops = self.step = None

    def report(self, median_step_s: float | None) -> dict[str, Any]:
        name = torch.cuda.get_device_name() if (cuda_in_use()) else None
        peak = peak_tflops(name) if name else None
        tflops = (
            self.flops / median_step_s / 1e12 if self.flops is not None and median_step_s else None
        )
        return {
            "step": self.step,
            "flops_per_step": self.flops,
            "median_step_s": median_step_s,
            "achieved_tflops": tflops,
            "device_name": name,
            "peak_bf16_tflops": peak,
            "mfu": tflops / peak if tflops is not None and peak else None,
            "error": self.error,
        }
