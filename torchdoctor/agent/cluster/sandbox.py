"""Sandbox jobs (instrumented runs, fix verifications) as Ray tasks: `RaySandbox` satisfies the
`Sandbox` protocol, so the audit does not know where its jobs run.

Each job is one task that asks for a GPU (`ClusterConfig.gpu_resource`) when the job wants
one, a CPU otherwise. The task unpacks the job's workspace on its node and runs it in that
node's own sandbox backend (`TORCHDOCTOR_SANDBOX` there, or the audit's choice): isolation
is exactly the local one. A task whose worker died is retried; cancelling the audit cancels
it (the sandbox's jobs die with their worker). A job that names the audit host's interpreter
or harness runs with the node's own (a GPU node's image may put Python elsewhere).
"""

from __future__ import annotations

import asyncio
import sys
import tarfile
from collections.abc import Callable
from functools import cache
from typing import Any

from torchdoctor.agent.cluster.config import ClusterConfig, connect
from torchdoctor.agent.cluster.shipping import pack, unpack
from torchdoctor.sandbox import PACKAGE_ROOT
from torchdoctor.sandbox.models import Isolation, Job, RunResult
from torchdoctor.sandbox.workspace import remove_workspace

Origin = tuple[str, str]
"""The audit host's interpreter and harness folder, as its jobs name them."""


def here() -> Origin:
    return sys.executable, str(PACKAGE_ROOT)


def on_this_node(job: Job, origin: Origin) -> Job:
    """The job with the audit host's interpreter and harness folder replaced by this node's
    (a module job names neither: the node's backend resolves both)."""
    if job.module is not None:
        return job
    python, root = origin
    command = [sys.executable if job.command[0] == python else job.command[0], *job.command[1:]]
    env = dict(job.env)
    if "PYTHONPATH" in env:
        parts = env["PYTHONPATH"].split(":")
        env["PYTHONPATH"] = ":".join(str(PACKAGE_ROOT) if p == root else p for p in parts)
    return job.model_copy(update={"command": command, "env": env})


def run_shipped(
    choice: str | None, job: Job, workspace: bytes, origin: Origin
) -> tuple[RunResult, str]:
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
        local = on_this_node(job, origin).model_copy(update={"workspace": copy})
        return sandbox.run(local), node
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
    """The cluster's sandboxes behind one `Sandbox`; `placements` lists the node of each job,
    and `say` hears it (the audit's progress: where each run and fix check went)."""

    def __init__(
        self, choice: str | None, cluster: ClusterConfig, say: Callable[[str], None] | None = None
    ) -> None:
        self.choice = choice
        self.cluster = cluster
        self.say = say
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
        ref = task.remote(self.choice, job, pack(job.workspace), here())
        try:
            result, node = self._ray.get(ref)
        except BaseException:
            self._ray.cancel(ref, force=True)  # the audit is stopping (or lost its task)
            raise
        self.placements.append(node)
        if self.say is not None:
            kind = f"{self.cluster.gpu_resource} task" if job.gpu else "CPU task"
            self.say(f"sandbox job on Ray node {node[:12]} ({kind}): {result.outcome.value}")
        return result  # type: ignore[no-any-return]

    async def arun(self, job: Job) -> RunResult:
        return await asyncio.to_thread(self.run, job)
