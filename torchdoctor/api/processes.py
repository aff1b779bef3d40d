"""Stopping a process with everything it started."""

from __future__ import annotations

import contextlib
import os
import signal

import psutil

# A process that cannot be stopped (another uid) and keeps forking must not hold us forever.
_MAX_ROUNDS = 50


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (sandbox jobs run in their own sessions).

    The family is frozen (SIGSTOP) before anything is killed, until a look finds no new member:
    a process cannot fork once stopped, so a child forked while we looked is not missed, and
    none is orphaned out of reach by its parent dying first. The caller may be the root (a
    worker ending itself when its server dies): it is never frozen, and it dies in the same
    breath as its family, before its other threads could act on a child's death (e.g. finish
    the audit with a killed run)."""
    me = os.getpid()
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    family = {root}
    for _ in range(_MAX_ROUNDS):
        _freeze(family - {root} if root.pid == me else family)
        found = set(family)
        for process in family:
            try:
                found.update(process.children(recursive=True))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        if found == family:
            break
        family = found
    # Frozen members cannot exit nor be reaped by a frozen parent, so their pids stay theirs;
    # plain os.kill keeps the GIL, so no other thread of ours runs between these calls.
    members = [process.pid for process in family if process.pid != me]
    for member in members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(member, signal.SIGKILL)
    if root.pid == me:
        os.kill(me, signal.SIGKILL)
    psutil.wait_procs([process for process in family if process.pid != me], timeout=5)


def _freeze(family: set[psutil.Process]) -> None:
    for process in family:
        try:
            process.send_signal(signal.SIGSTOP)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
