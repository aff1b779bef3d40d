"""The host's view of a job's processes: who belongs to it, how much memory they hold, and the
final sweep that kills every one of them.

A job is identified by its own uid (each job gets a uid nobody else uses), which survives
`setsid()`, double forks and re-parenting; when the service cannot change uid, by the session
its launcher started. Killing by uid uses `kill(-1, SIGKILL)` from a child that has become that
uid: the kernel then signals exactly the processes that uid owns, whatever their session.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class JobIdentity:
    """How to recognise the job's processes: its uid when it has its own, else its session."""

    uid: int | None
    session: int

    def owns(self, pid: int) -> bool:
        try:
            if self.uid is not None:
                return os.stat(f"/proc/{pid}").st_uid == self.uid
            return _session_of(pid) == self.session
        except (FileNotFoundError, ProcessLookupError, ValueError):
            return False


def _session_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
        after_name = handle.read().rsplit(")", 1)[1].split()
    return int(after_name[3])


def job_pids(identity: JobIdentity) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and identity.owns(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def resident_mb(pids: list[int]) -> float:
    """Sum of the resident set sizes of `pids`, in MiB (vanished processes count zero)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", encoding="ascii") as handle:
                total += int(handle.read().split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return total * PAGE_SIZE / 2**20


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each of `pids` (vanished processes are left out)."""
    found = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            found[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return found


def kill_as_uid(uid: int) -> None:
    """Signal every process of `uid` with SIGKILL, from a child that has become that uid."""
    if uid in (0, os.getuid()):
        raise ValueError(f"refusing to kill every process of uid {uid}")
    child = os.fork()
    if child == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)
        finally:
            os._exit(0)
    os.waitpid(child, 0)


def sweep(identity: JobIdentity, deadline_s: float = 5.0) -> list[int]:
    """Kill the job's processes until none is left; return the pids still alive at the end."""
    stop = time.monotonic() + deadline_s
    while True:
        pids = job_pids(identity)
        if identity.uid is not None and pids:
            kill_as_uid(identity.uid)
        else:
            _kill_each(pids, identity)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(identity.session, signal.SIGKILL)
        survivors = [pid for pid in job_pids(identity) if not _is_zombie(pid)]
        if not survivors or time.monotonic() > stop:
            return survivors
        time.sleep(0.02)


def _kill_each(pids: list[int], identity: JobIdentity) -> None:
    for pid in pids:
        if identity.owns(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
