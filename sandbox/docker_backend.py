"""The `docker` backend: one throw-away container per job, through the Docker SDK.

The container has no network, a read-only root with a tmpfs /tmp, no capabilities, no way to
gain privileges, a non-root user, an init process as PID 1 (so signals and orphans behave),
and cgroup limits on memory (no swap) and processes; CPU time, file size and descriptors are
ulimits. The job's workspace is a fresh host copy bind-mounted at `/workspace`. GPUs are passed
with a device request when the job asks for one and the host has NVIDIA devices.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.types import DeviceRequest, Ulimit

from sandbox.capture import CappedStream, OutputBudget
from sandbox.collect import collect_files
from sandbox.environment import job_environment
from sandbox.mechanisms import NAMESPACES, gpu_device_nodes
from sandbox.models import Isolation, Job, Limits, ResourceUsage, RunResult
from sandbox.outcome import Stop, classify
from sandbox.workspace import hand_over, remove_workspace, stage_workspace, tree_bytes

if TYPE_CHECKING:
    from sandbox.config import DockerConfig

WAIT_SLICE_S = 0.25
LABEL = "torchdoctor.sandbox"


def docker_ready(config: DockerConfig) -> bool:
    """Whether an engine answers and holds the sandbox image (nothing can be pulled here)."""
    try:
        client = _client(config, timeout=3)
        client.ping()
        client.images.get(config.image)
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError):
        return False
    return True


def _client(config: DockerConfig, timeout: int = 60) -> docker.DockerClient:
    if config.base_url:
        return docker.DockerClient(base_url=config.base_url, timeout=timeout)
    return docker.from_env(timeout=timeout)


class DockerSandbox:
    """A `Sandbox` that runs each job in its own container."""

    def __init__(self, config: DockerConfig) -> None:
        self.config = config
        self.client = _client(config)
        self._root = config.run_root or Path(f"/tmp/torchdoctor-docker-{os.getuid()}")

    @property
    def isolation(self) -> Isolation:
        return self._describe(gpu=self._gpu_wanted(True), rlimits={})

    def run(self, job: Job) -> RunResult:
        self._root.mkdir(mode=0o711, parents=True, exist_ok=True)
        workspace = stage_workspace(job.workspace, self._root)
        try:
            uid, _, gid = self.config.user.partition(":")
            hand_over(workspace, int(uid), int(gid or uid))
            return self._run_in(job, workspace)
        finally:
            remove_workspace(workspace)

    async def arun(self, job: Job) -> RunResult:
        return await asyncio.to_thread(self.run, job)

    def _run_in(self, job: Job, workspace: Path) -> RunResult:
        limits = job.limits
        gpu = self._gpu_wanted(job.gpu)
        ulimits = _ulimits(limits)
        container = self._create(job, workspace, gpu, ulimits)
        stop: list[Stop] = []
        lock = threading.Lock()

        def kill(reason: Stop) -> None:
            with lock:
                if stop:
                    return
                stop.append(reason)
            try:
                container.kill()
            except docker.errors.APIError:
                return

        budget = OutputBudget(limits.output_bytes, lambda: kill(Stop.OUTPUT))
        out, err = CappedStream(budget), CappedStream(budget)
        try:
            started = time.monotonic()
            container.start()
            reader = threading.Thread(target=_pump, args=(container, out, err), daemon=True)
            reader.start()
            self._wait(container, workspace, limits, started, kill)
            wall = time.monotonic() - started
            reader.join(timeout=5)
            container.reload()
            state: dict[str, Any] = container.attrs["State"]
        finally:
            container.remove(force=True)
        if state.get("OOMKilled") and not stop:
            stop.append(Stop.MEMORY)
        code = int(state.get("ExitCode", -1))
        exit_code, signal_number = (None, code - 128) if 128 < code < 193 else (code, None)
        stderr = err.text()
        outcome, reason = classify(
            stop=stop[0] if stop else None,
            exit_code=exit_code,
            signal_number=signal_number,
            stderr=stderr,
            cpu_s=None,
            cpu_limit_s=limits.cpu_s,
        )
        return RunResult(
            outcome=outcome,
            exit_code=exit_code,
            signal=signal_number,
            reason=reason,
            stdout=out.text(),
            stderr=stderr,
            output_truncated=out.truncated or err.truncated,
            files=collect_files(workspace, job.collect, limits.collect_bytes),
            usage=ResourceUsage(wall_s=round(wall, 3)),
            isolation=self._describe(gpu=gpu, rlimits={u.name: int(u.soft or 0) for u in ulimits}),
        )

    def _create(self, job: Job, workspace: Path, gpu: bool, ulimits: list[Ulimit]) -> Container:
        limits = job.limits
        workdir = self.config.workdir
        volumes = {str(p): {"bind": str(p), "mode": "ro"} for p in self.config.read_only}
        volumes[str(workspace)] = {"bind": workdir, "mode": "rw"}
        env = job_environment(
            os.environ, job.env, home=workdir, path=self.config.path, tmpdir="/tmp"
        )
        requests_ = [DeviceRequest(count=-1, capabilities=[["gpu"]])] if gpu else []
        return self.client.containers.create(
            self.config.image,
            command=job.command,
            user=self.config.user,
            working_dir=workdir,
            environment=env,
            network_mode="none",
            read_only=True,
            tmpfs={"/tmp": f"size={limits.disk_mb}m,mode=1777"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            pids_limit=limits.processes,
            mem_limit=f"{limits.memory_mb}m",
            memswap_limit=f"{limits.memory_mb}m",
            ulimits=ulimits,
            volumes=volumes,
            device_requests=requests_,
            init=True,
            labels={LABEL: "1"},
            detach=True,
        )

    def _wait(
        self,
        container: Container,
        workspace: Path,
        limits: Limits,
        started: float,
        kill: Any,
    ) -> None:
        while True:
            try:
                container.wait(timeout=WAIT_SLICE_S)
                return
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                pass
            if time.monotonic() - started >= limits.wall_s:
                kill(Stop.WALL)
            elif tree_bytes(workspace) > limits.disk_mb * 2**20:
                kill(Stop.DISK)

    def _gpu_wanted(self, requested: bool) -> bool:
        if self.config.gpus == "none" or not requested:
            return False
        return self.config.gpus == "all" or bool(gpu_device_nodes())

    def _describe(self, *, gpu: bool, rlimits: dict[str, int]) -> Isolation:
        return Isolation(
            backend="docker",
            mechanism="docker",
            namespaces=list(NAMESPACES),
            user=f"{self.config.user} (non-root, no capabilities, no-new-privileges)",
            rlimits=rlimits,
            network="none",
            filesystem="read-only image root; writable: workspace bind, tmpfs /tmp",
            gpu=gpu,
        )


def _ulimits(limits: Limits) -> list[Ulimit]:
    return [
        Ulimit(name="cpu", soft=limits.cpu_s, hard=limits.cpu_s + 1),
        Ulimit(name="fsize", soft=limits.file_size_mb * 2**20, hard=limits.file_size_mb * 2**20),
        Ulimit(name="nofile", soft=limits.open_files, hard=limits.open_files),
        Ulimit(name="core", soft=0, hard=0),
    ]


def _pump(container: Container, out: CappedStream, err: CappedStream) -> None:
    """Feed the container's demultiplexed output into the capped streams until it ends."""
    try:
        for stdout, stderr in container.attach(stream=True, logs=True, demux=True):
            if stdout:
                out.feed(stdout)
            if stderr:
                err.feed(stderr)
    except (docker.errors.APIError, requests.exceptions.RequestException):
        return
