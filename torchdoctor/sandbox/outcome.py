"""Turn how a job ended into one typed outcome and a reason a person can read.

The service's own decisions (wall-clock, memory, output or disk limit) come first because they
are certain; then the launcher's own failure; then what the kernel did (SIGXCPU / SIGKILL at the
CPU limit); then the job's exit status, where a MemoryError or a failed allocation under the
address-space limit counts as hitting the memory limit.
"""

from __future__ import annotations

import signal
from enum import StrEnum

from torchdoctor.sandbox.launch import ERROR_PREFIX, SANDBOX_ERROR_STATUS

MEMORY_ERROR_SIGNS = (
    "MemoryError",
    "Cannot allocate memory",
    "std::bad_alloc",
    "DefaultCPUAllocator: can't allocate memory",
)


class Outcome(StrEnum):
    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"
    MEMORY_LIMIT = "memory-limit"
    OUTPUT_LIMIT = "output-limit"
    KILLED = "killed"
    SANDBOX_ERROR = "sandbox-error"


class Stop(StrEnum):
    """Why the service itself ended a job, if it did."""

    WALL = "wall-clock limit"
    MEMORY = "memory limit"
    OUTPUT = "output limit"
    DISK = "disk quota"


def classify(
    *,
    stop: Stop | None,
    exit_code: int | None,
    signal_number: int | None,
    stderr: str,
    cpu_s: float | None,
    cpu_limit_s: int,
) -> tuple[Outcome, str]:
    if stop is Stop.WALL:
        return Outcome.TIMEOUT, "killed at the wall-clock limit"
    if stop is Stop.MEMORY:
        return Outcome.MEMORY_LIMIT, "killed at the memory limit"
    if stop is Stop.OUTPUT:
        return Outcome.OUTPUT_LIMIT, "killed after exceeding the output limit"
    if stop is Stop.DISK:
        return Outcome.KILLED, "killed after exceeding the disk quota"
    if exit_code == SANDBOX_ERROR_STATUS and ERROR_PREFIX in stderr:
        line = next(ln for ln in stderr.splitlines() if ERROR_PREFIX in ln)
        return Outcome.SANDBOX_ERROR, line.split(ERROR_PREFIX, 1)[1].strip()
    if signal_number is not None:
        return _by_signal(signal_number, cpu_s, cpu_limit_s)
    if exit_code == 0:
        return Outcome.OK, "exited with status 0"
    if any(sign in stderr[-4000:] for sign in MEMORY_ERROR_SIGNS):
        return Outcome.MEMORY_LIMIT, f"ran out of memory under the limit (status {exit_code})"
    return Outcome.FAILED, f"exited with status {exit_code}"


def _by_signal(number: int, cpu_s: float | None, cpu_limit_s: int) -> tuple[Outcome, str]:
    name = _signal_name(number)
    cpu_spent = cpu_s is not None and cpu_s >= cpu_limit_s - 0.5
    if number == signal.SIGXCPU or (number == signal.SIGKILL and cpu_spent):
        return Outcome.TIMEOUT, f"killed by {name} at the CPU-time limit"
    if number == signal.SIGXFSZ:
        return Outcome.KILLED, f"killed by {name} at the file-size limit"
    return Outcome.KILLED, f"killed by {name}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
