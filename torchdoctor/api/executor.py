"""Where audits run: off the event loop, in a bounded pool, behind a small `Executor` protocol.

The embedded default, `LocalExecutor`, runs each audit as a child process of this server
(`python -m torchdoctor.api.worker`): the event loop never waits on analysis or sandbox runs,
a cancelled audit is killed with every process it started, and a child dies with its server, so
after a crash the audit is resumed from its checkpoint by whichever server claims it next. A
distributed executor (Ray) implements the same calls.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from typing import Protocol

import psutil


class Executor(Protocol):
    def free_slots(self) -> int:
        """How many more audits it can start now."""
        ...

    def start(self, audit_id: str, owner: str) -> None:
        """Start running a claimed audit; returns at once."""
        ...

    def running(self) -> list[str]:
        """The audits it is still running (finished ones are reaped)."""
        ...

    def kill(self, audit_id: str) -> None:
        """Stop an audit now, with every process it started (sandbox jobs included)."""
        ...

    def close(self) -> None:
        """Kill everything still running (server shutdown)."""
        ...


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


class LocalExecutor:
    """Child processes on this machine, at most `max_workers` at once."""

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def free_slots(self) -> int:
        return self.max_workers - len(self.running())

    def start(self, audit_id: str, owner: str) -> None:
        self._children[audit_id] = subprocess.Popen(
            [sys.executable, "-m", "torchdoctor.api.worker", audit_id, owner, str(os.getpid())],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def running(self) -> list[str]:
        for audit_id, child in list(self._children.items()):
            if child.poll() is not None:
                del self._children[audit_id]
        return list(self._children)

    def kill(self, audit_id: str) -> None:
        child = self._children.pop(audit_id, None)
        if child is not None:
            kill_tree(child.pid)
            child.wait()

    def close(self) -> None:
        for audit_id in list(self._children):
            self.kill(audit_id)
