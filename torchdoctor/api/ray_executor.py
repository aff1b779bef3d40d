"""The distributed executor: each claimed audit is a Ray task on the cluster (`RAY_ADDRESS`),
selected by `TORCHDOCTOR_EXECUTOR=ray`; the in-process `LocalExecutor` stays the default.

Inside its task the audit shards its static pass and sends each sandbox job as a task of its
own (GPU jobs to GPU nodes), see `torchdoctor.agent.cluster`. Its checkpoints go to the
store every server shares (PostgreSQL), so a task retried after its node died resumes there,
and any API replica can serve the audit. The task is owned by the server that claimed it and
dies with it; the lease then runs out and another replica resumes the audit. Killing an
audit cancels its task and, recursively, the tasks it started.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from torchdoctor.agent.cluster.config import ClusterConfig, connect
from torchdoctor.api import worker
from torchdoctor.api.settings import ApiSettings

log = logging.getLogger("torchdoctor.api")


def task_environment(settings: ApiSettings) -> dict[str, str]:
    """What an audit's task needs to find the store, its checkpoints and its sandbox on any
    node: the server's `TORCHDOCTOR_*` settings, the resolved ones spelled out."""
    env = {k: v for k, v in os.environ.items() if k.startswith("TORCHDOCTOR_")}
    env.update(
        TORCHDOCTOR_HOME=str(settings.home),
        TORCHDOCTOR_DATABASE_URL=settings.url,
        TORCHDOCTOR_EXECUTOR="ray",
        RAY_USAGE_STATS_ENABLED="0",
    )
    if settings.sandbox:
        env["TORCHDOCTOR_SANDBOX"] = settings.sandbox
    return env


class RayExecutor:
    """Audits as Ray tasks, at most `max_running` of this server's at once."""

    def __init__(self, max_running: int, settings: ApiSettings, cluster: ClusterConfig) -> None:
        self.max_running = max_running
        self._ray = connect(cluster)
        self._task = self._ray.remote(worker.run_on_cluster)
        self._options = {
            "num_cpus": 1,
            "max_retries": cluster.retries,
            "runtime_env": {"env_vars": task_environment(settings)},
        }
        self._refs: dict[str, Any] = {}
        self._lock = threading.Lock()

    def free_slots(self) -> int:
        return self.max_running - len(self.running())

    def start(self, audit_id: str, owner: str) -> None:
        task = self._task.options(**self._options, name=f"torchdoctor-audit-{audit_id}")
        ref = task.remote(audit_id, owner)
        with self._lock:
            self._refs[audit_id] = ref

    def running(self) -> list[str]:
        with self._lock:
            refs = dict(self._refs)
        if not refs:
            return []
        done, _ = self._ray.wait(list(refs.values()), num_returns=len(refs), timeout=0)
        finished = {ref for ref in done}
        with self._lock:
            for audit_id, ref in refs.items():
                if ref in finished:
                    self._refs.pop(audit_id, None)
                    self._log_failure(audit_id, ref)
            return list(self._refs)

    def _log_failure(self, audit_id: str, ref: Any) -> None:
        """A task that failed for good (retries spent): its lease runs out, and the next
        server to claim the audit resumes it."""
        try:
            self._ray.get(ref, timeout=0)
        except Exception as err:
            log.warning("audit task failed: %s", type(err).__name__, extra={"audit_id": audit_id})

    def kill(self, audit_id: str) -> None:
        with self._lock:
            ref = self._refs.pop(audit_id, None)
        if ref is not None:
            self._ray.cancel(ref, force=True, recursive=True)

    def watch_ends(self, callback: Callable[[], None]) -> None:
        """Not told: a task's end is seen at the dispatcher's next tick (a cluster's audits
        are long enough that a tick's wait does not count)."""

    def close(self) -> None:
        with self._lock:
            audit_ids = list(self._refs)
        for audit_id in audit_ids:
            self.kill(audit_id)
