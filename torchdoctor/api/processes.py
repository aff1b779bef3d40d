"""Stopping a process with everything it started."""

from __future__ import annotations

import signal

import psutil


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (sandbox jobs run in their own sessions)."""
    try:
        root = psutil.Process(pid)
        family = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for process in family:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(family, timeout=5)
