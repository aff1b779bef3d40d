"""GPU board power sampled through NVML while the script runs: joules per step (item 8.1).

The harness stays torch + stdlib: NVML is reached through `pynvml` (nvidia-ml-py) when it is
importable, else through `ctypes` on the driver's libnvidia-ml; with neither (a CPU machine,
no driver library) the probe reports nothing and costs nothing.
"""

from __future__ import annotations

import ctypes
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

INTERVAL_S = 0.05


def _pynvml_reader() -> Callable[[], float] | None:
    try:
        import pynvml  # type: ignore[import-not-found,import-untyped,unused-ignore]

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    except Exception:
        return None
    return lambda: float(pynvml.nvmlDeviceGetPowerUsage(handle)) / 1000.0


def _ctypes_reader() -> Callable[[], float] | None:
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
        if nvml.nvmlInit_v2() != 0:
            return None
        handle = ctypes.c_void_p()
        if nvml.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(handle)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    milliwatts = ctypes.c_uint()

    def read() -> float:
        if nvml.nvmlDeviceGetPowerUsage(handle, ctypes.byref(milliwatts)) != 0:
            raise OSError("nvmlDeviceGetPowerUsage failed")
        return milliwatts.value / 1000.0

    return read


class PowerProbe:
    """Samples board power every 50 ms in a daemon thread; steady samples start at `steady()`."""

    def __init__(self) -> None:
        self.source: str | None = None
        self._read: Callable[[], float] | None = None
        self._samples: list[tuple[float, float]] = []
        self._steady_from: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    def start(self) -> None:
        reader = _pynvml_reader()
        self.source = "pynvml" if reader else None
        if reader is None:
            reader = _ctypes_reader()
            self.source = "nvml-ctypes" if reader else None
        if reader is None:
            return
        self._read = reader
        self._thread = threading.Thread(target=self._run, name="td-power", daemon=True)
        self._thread.start()

    def steady(self) -> None:
        """Steady-state steps begin now (the first step's start-up is left out)."""
        if self._steady_from is None:
            self._steady_from = time.time()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def _run(self) -> None:
        assert self._read is not None
        while not self._stop.is_set():
            try:
                self._samples.append((time.time(), self._read()))
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                return
            time.sleep(INTERVAL_S)

    def report(self, median_step_s: float | None) -> dict[str, Any] | None:
        if self.source is None:
            return None
        since = self._steady_from or 0.0
        watts = [w for t, w in list(self._samples) if t >= since]
        mean = statistics.fmean(watts) if watts else None
        return {
            "source": self.source,
            "samples": len(watts),
            "mean_watts": mean,
            "max_watts": max(watts) if watts else None,
            "joules_per_step": mean * median_step_s if mean and median_step_s else None,
            "error": self.error,
        }
