"""How many CPUs this process may use: its affinity (taskset, a container's cpuset), not the
machine's count, which oversubscribes a 2-core slice of a 16-core host eightfold."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The CPUs the scheduler lets this process run on (`os.process_cpu_count()` of 3.13)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no affinity on macOS and Windows: the machine's count
        return os.cpu_count() or 1
