"""Where audits run: off the event loop, in a bounded pool, behind a small `Executor` protocol.

The embedded default, `LocalExecutor`, runs each audit in a process of its own on this
machine, forked from a fork server that has the audit machinery imported already (a start costs
milliseconds, not seconds of imports): the event loop never waits on analysis or sandbox runs,
a cancelled audit is killed with every process it started, and a worker stops (with its
sandbox jobs) when its server dies, so after a crash the audit is resumed from its checkpoint
by whichever server claims it next. A distributed executor (Ray) implements the same calls.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from typing import Protocol

from torchdoctor.agent.cluster.config import ClusterConfig
from torchdoctor.api import worker
from torchdoctor.api.processes import kill_tree
from torchdoctor.api.settings import ApiSettings

PRELOAD = "torchdoctor.api.preload"
"""Loaded by the fork server only (by name: the server process itself needs none of it)."""


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

    def watch_ends(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from any thread) whenever one of its audits ends, so that its
        slot is filled at once."""
        ...


class LocalExecutor:
    """Worker processes on this machine, at most `max_workers` at once."""

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload([worker.__name__, PRELOAD])
        self._children: dict[str, BaseProcess] = {}
        self._lock = threading.Lock()
        self._on_end: Callable[[], None] | None = None
        # The fork server imports the audit machinery once, in the background.
        threading.Thread(target=self._boot, daemon=True, name="forkserver-boot").start()

    def _boot(self) -> None:
        self._context.Process(target=worker.ready).start()

    def free_slots(self) -> int:
        return self.max_workers - len(self.running())

    def start(self, audit_id: str, owner: str) -> None:
        process = self._context.Process(
            target=worker.run,
            args=(audit_id, owner, os.getpid()),
            name=f"torchdoctor-audit-{audit_id}",
        )
        process.start()
        with self._lock:
            self._children[audit_id] = process
        if self._on_end is not None:
            threading.Thread(
                target=self._tell_end, args=(process, self._on_end), daemon=True
            ).start()

    def watch_ends(self, callback: Callable[[], None]) -> None:
        self._on_end = callback

    @staticmethod
    def _tell_end(process: BaseProcess, callback: Callable[[], None]) -> None:
        """Waits on the worker's sentinel (it does not reap it: `running` does)."""
        wait([process.sentinel])
        callback()

    def running(self) -> list[str]:
        with self._lock:
            for audit_id, child in list(self._children.items()):
                if not child.is_alive():
                    child.join()
                    del self._children[audit_id]
            return list(self._children)

    def kill(self, audit_id: str) -> None:
        with self._lock:
            child = self._children.pop(audit_id, None)
        if child is not None and child.pid is not None:
            kill_tree(child.pid)
            child.join()

    def close(self) -> None:
        with self._lock:
            audit_ids = list(self._children)
        for audit_id in audit_ids:
            self.kill(audit_id)


def executor_for(settings: ApiSettings) -> Executor:
    """`TORCHDOCTOR_EXECUTOR=ray`: the Ray cluster's; otherwise this machine's processes."""
    cluster = ClusterConfig.from_env()
    if cluster.on_ray:
        from torchdoctor.api.ray_executor import RayExecutor

        return RayExecutor(settings.audit_workers, settings, cluster)
    return LocalExecutor(settings.audit_workers)
