"""Sandbox jobs (instrumented runs, fix verifications) as Ray tasks: `RaySandbox` satisfies the
`Sandbox` protocol, so the audit does not know where its jobs run.

Each job is one task that asks for a GPU (`ClusterConfig.gpu_resource`) when the job wants
one, a CPU otherwise. The task unpacks the job's workspace on its node and runs it in that
node's own sandbox backend (`TORCHDOCTOR_SANDBOX` there, or the audit's choice): isolation
is exactly the local one. A task whose worker died is retried; cancelling the audit cancels
it (the sandbox's jobs die with their worker). The nodes run the same image as the audit
(the job's interpreter and harness paths are the audit's).
"""

from __future__ import annotations

import asyncio
import tarfile
from functools import cache
from typing import Any

from torchdoctor.agent.cluster.config import ClusterConfig, connect
from torchdoctor.agent.cluster.shipping import pack, unpack
from torchdoctor.sandbox.models import Isolation, Job, RunResult
from torchdoctor.sandbox.workspace import remove_workspace


def run_shipped(choice: str | None, job: Job, workspace: bytes) -> tuple[RunResult, str]:
    """On the node: the job on its unpacked workspace, in this node's sandbox; returns the
    result and the node's id."""
    import ray

    from torchdoctor.sandbox.config import get_sandbox

    node = str(ray.get_runtime_context().get_node_id())
    sandbox = get_sandbox(choice)
    try:
        folder, copy = unpack(workspace)
    except (tarfile.TarError, OSError) as err:
        refused = RunResult.sandbox_error(f"workspace refused: {err}", sandbox.isolation)
        return refused, node
    try:
        return sandbox.run(job.model_copy(update={"workspace": copy})), node
    finally:
        remove_workspace(folder)


def node_isolation(choice: str | None) -> Isolation:
    from torchdoctor.sandbox.config import get_sandbox

    return get_sandbox(choice).isolation


@cache
def _remote(function: Any) -> Any:
    import ray

    return ray.remote(function)


class RaySandbox:
    """The cluster's sandboxes behind one `Sandbox`; `placements` lists the node of each job."""

    def __init__(self, choice: str | None, cluster: ClusterConfig) -> None:
        self.choice = choice
        self.cluster = cluster
        self.placements: list[str] = []
        self._ray = connect(cluster)
        self._isolation: Isolation | None = None

    @property
    def isolation(self) -> Isolation:
        """A CPU node's isolation (every node runs the same backend)."""
        if self._isolation is None:
            task = _remote(node_isolation).options(num_cpus=1, max_retries=self.cluster.retries)
            self._isolation = self._ray.get(task.remote(self.choice))
        return self._isolation

    def run(self, job: Job) -> RunResult:
        options: dict[str, Any] = {"num_cpus": 1, "max_retries": self.cluster.retries}
        if job.gpu:
            options.update(self.cluster.asks_for_gpu())
        task = _remote(run_shipped).options(**options)
        ref = task.remote(self.choice, job, pack(job.workspace))
        try:
            result, node = self._ray.get(ref)
        except BaseException:
            self._ray.cancel(ref, force=True)  # the audit is stopping (or lost its task)
            raise
        self.placements.append(node)
        return result  # type: ignore[no-any-return]

    async def arun(self, job: Job) -> RunResult:
        return await asyncio.to_thread(self.run, job)
