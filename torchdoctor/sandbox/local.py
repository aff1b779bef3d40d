"""The `local` backend: the typed `Sandbox` over `torchdoctor.sandbox.core.LocalRunner`.

The strongest isolation this host allows is found by probing at start-up (bwrap, then unshare,
then bare rlimits); each job runs on a fresh copy of its workspace under a uid of its own, and
the isolation actually in force is reported with every result.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from torchdoctor.sandbox import PACKAGE_ROOT
from torchdoctor.sandbox.collect import collect_files
from torchdoctor.sandbox.core import (
    LocalRunner,
    ProbeResult,
    RunLimits,
    RunReport,
    SandboxUnavailable,
)
from torchdoctor.sandbox.mechanisms import NAMESPACES, Mechanism, gpu_device_nodes
from torchdoctor.sandbox.models import CollectedFile, Isolation, Job, ResourceUsage, RunResult
from torchdoctor.sandbox.workspace import WorkspaceError

if TYPE_CHECKING:
    from torchdoctor.sandbox.config import LocalConfig

__all__ = ["LocalSandbox", "ProbeResult", "SandboxUnavailable", "describe"]


class LocalSandbox:
    """A `Sandbox` that confines jobs on this host."""

    def __init__(self, config: LocalConfig) -> None:
        self.config = config
        self.runner = LocalRunner(
            python=str(config.python),
            mechanism=config.mechanism,
            read_only=[str(p) for p in config.read_only],
            run_root=config.run_root,
            uid_base=config.uid_base,
            uid_count=config.uid_count,
            address_space_factor=config.address_space_factor,
        )

    @property
    def mechanism(self) -> Mechanism:
        return self.runner.mechanism

    @property
    def isolation(self) -> Isolation:
        user = "a fresh unprivileged uid per job" if self.runner.privileged else None
        return describe(self.mechanism, job_user=user, gpu=bool(gpu_device_nodes()))

    def probe(self, mechanism: Mechanism) -> ProbeResult:
        return self.runner.probe(mechanism)

    def run(self, job: Job) -> RunResult:
        files: list[CollectedFile] = []

        def collect(workspace: Path) -> None:
            files.extend(collect_files(workspace, job.collect, job.limits.collect_bytes))

        limits = RunLimits(**job.limits.model_dump(exclude={"collect_bytes"}))
        try:
            report = self.runner.execute(
                job.workspace,
                job.argv(str(self.config.python)),
                _import_path(job),
                limits,
                gpu=job.gpu,
                cache=job.cache,
                before_cleanup=collect,
            )
        except WorkspaceError as exc:
            return RunResult.sandbox_error(f"workspace refused: {exc}", self.isolation)
        return to_result(report, files)

    async def arun(self, job: Job) -> RunResult:
        return await asyncio.to_thread(self.run, job)


def _import_path(job: Job) -> dict[str, str]:
    """A module job imports torchdoctor's sandbox side (the probes harness) from this
    installation; the job's own PYTHONPATH, if any, comes after it."""
    if job.module is None:
        return dict(job.env)
    own = job.env.get("PYTHONPATH")
    path = f"{PACKAGE_ROOT}:{own}" if own else str(PACKAGE_ROOT)
    return {**job.env, "PYTHONPATH": path}


def to_result(report: RunReport, files: list[CollectedFile]) -> RunResult:
    job_user = f"uid {report.uid} (unprivileged, this job only)" if report.uid else None
    isolation = describe(report.mechanism, job_user=job_user, gpu=bool(report.gpu_nodes))
    return RunResult(
        outcome=report.outcome,
        exit_code=report.exit_code,
        signal=report.signal,
        reason=report.reason,
        stdout=report.stdout,
        stderr=report.stderr,
        output_truncated=report.truncated,
        files=files,
        usage=ResourceUsage(
            wall_s=report.wall_s,
            cpu_s=report.cpu_s,
            peak_memory_mb=report.peak_rss_mb,
        ),
        isolation=isolation.model_copy(
            update={"rlimits": report.rlimits, "limits_held": report.held_by}
        ),
    )


def describe(mechanism: Mechanism, *, job_user: str | None, gpu: bool) -> Isolation:
    """The isolation a job gets; `job_user` is None when it runs as the service's own user."""
    warnings: list[str] = []
    namespaced = mechanism is not Mechanism.RLIMITS
    if not namespaced:
        warnings.append(
            "DEGRADED ISOLATION: no Linux namespaces are available; the job shares the host's "
            "network, process table and filesystem and is held only by rlimits"
            + (" and its own uid" if job_user is not None else "")
        )
    if job_user is None:
        warnings.append(
            "the job runs as the service's own user: it can read what the service can read "
            "and process limits are not per job"
        )
    filesystem = {
        Mechanism.BWRAP: "read-only system and interpreter; writable: workspace, private /tmp",
        Mechanism.UNSHARE: "host visible (writes held by permissions), /root and /home hidden; "
        "writable: workspace, private tmpfs /tmp /var/tmp /dev/shm",
        Mechanism.RLIMITS: "host filesystem; writable wherever the job's user may write",
    }[mechanism]
    return Isolation(
        backend="local",
        mechanism=mechanism.value,
        namespaces=list(NAMESPACES) if namespaced else [],
        user=job_user or "the service's own user",
        network="none" if namespaced else "host",
        filesystem=filesystem,
        gpu=gpu,
        degraded=bool(warnings),
        warnings=warnings,
    )
