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
from multiprocessing.connection import Connection, wait
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
    """Worker processes on this machine, at most `max_workers` at once.

    A worker says when its audit's outcome is recorded (it closes the pipe it was given), and
    from then on neither holds a slot nor counts as running: the next audit starts, and the
    audit's parked repeats finish, while the kernel still tears the worker's address space
    down (10-40 ms for a worker that ran its peers, once per audit, on every slot's path).
    It is reaped once it has exited, and killed with the rest at shutdown.
    """

    def __init__(self, max_workers: int) -> None:
        self.max_workers = max_workers
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload([worker.__name__, PRELOAD])
        self._children: dict[str, BaseProcess] = {}
        self._exiting: list[BaseProcess] = []
        """Workers whose audit's outcome is recorded, not yet reaped."""
        self._lock = threading.Lock()
        self._on_end: Callable[[], None] | None = None
        # The fork server imports the audit machinery once, in the background.
        threading.Thread(target=self._boot, daemon=True, name="forkserver-boot").start()

    def _boot(self) -> None:
        self._context.Process(target=worker.ready).start()

    def free_slots(self) -> int:
        return self.max_workers - len(self.running())

    def start(self, audit_id: str, owner: str) -> None:
        recorded, record = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=worker.run,
            args=(audit_id, owner, os.getpid(), record),
            name=f"torchdoctor-audit-{audit_id}",
        )
        process.start()
        record.close()  # the worker's copy alone: end of file once it has recorded its outcome
        with self._lock:
            self._children[audit_id] = process
        threading.Thread(
            target=self._tell_end, args=(audit_id, process, recorded), daemon=True
        ).start()

    def watch_ends(self, callback: Callable[[], None]) -> None:
        self._on_end = callback

    def _tell_end(self, audit_id: str, process: BaseProcess, recorded: Connection) -> None:
        """Waits until the worker has recorded its audit's outcome, or has ended (its pipe's
        end of file, or its sentinel), then lets its slot go (it is reaped by `running`)."""
        wait([process.sentinel, recorded])
        recorded.close()
        with self._lock:
            if self._children.get(audit_id) is process:
                del self._children[audit_id]
                self._exiting.append(process)
        if self._on_end is not None:
            self._on_end()

    def running(self) -> list[str]:
        with self._lock:
            for child in [c for c in self._exiting if not c.is_alive()]:
                child.join()
                self._exiting.remove(child)
            for audit_id, child in list(self._children.items()):
                if not child.is_alive():
                    child.join()
                    del self._children[audit_id]
            return list(self._children)

    def kill(self, audit_id: str) -> None:
        with self._lock:
            child = self._children.pop(audit_id, None)
        if child is not None:
            self._kill(child)

    @staticmethod
    def _kill(child: BaseProcess) -> None:
        if child.pid is not None:
            kill_tree(child.pid)
            child.join()

    def close(self) -> None:
        with self._lock:
            audit_ids = list(self._children)
            exiting, self._exiting = self._exiting, []
        for audit_id in audit_ids:
            self.kill(audit_id)
        for child in exiting:
            self._kill(child)


def executor_for(settings: ApiSettings) -> Executor:
    """`TORCHDOCTOR_EXECUTOR=ray`: the Ray cluster's; otherwise this machine's processes."""
    cluster = ClusterConfig.from_env()
    if cluster.on_ray:
        from torchdoctor.api.ray_executor import RayExecutor

        return RayExecutor(settings.audit_workers, settings, cluster)
    return LocalExecutor(settings.audit_workers)
