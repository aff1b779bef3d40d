"""Stopping a process with everything it started."""

from __future__ import annotations

import signal

import psutil

# A process that cannot be stopped (another uid) and keeps forking must not hold us forever.
_MAX_ROUNDS = 50


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (sandbox jobs run in their own sessions).

    The family is frozen (SIGSTOP) before anything is killed, until a look finds no new member:
    a process cannot fork once stopped, so a child forked while we looked is not missed, and
    none is orphaned out of reach by its parent dying first."""
    try:
        family = {psutil.Process(pid)}
    except psutil.NoSuchProcess:
        return
    for _ in range(_MAX_ROUNDS):
        _signal_all(family, signal.SIGSTOP)
        found = set(family)
        for process in family:
            try:
                found.update(process.children(recursive=True))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        if found == family:
            break
        family = found
    _signal_all(family, signal.SIGKILL)
    psutil.wait_procs(list(family), timeout=5)


def _signal_all(family: set[psutil.Process], signum: signal.Signals) -> None:
    for process in family:
        try:
            process.send_signal(signum)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
