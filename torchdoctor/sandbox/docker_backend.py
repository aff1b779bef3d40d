"""The `docker` backend: one throw-away container per job, through the Docker SDK.

The container has no network, a read-only root with a tmpfs /tmp, no capabilities, no way to
gain privileges, a non-root user, an init process as PID 1 (so signals and orphans behave),
and cgroup limits on memory (no swap) and processes; CPU time, file size and descriptors are
ulimits. Output is attached before the start and never logged by the engine (a job printing
without end must not fill the host's disk with a JSON log). The job's workspace is a fresh
host copy bind-mounted at `/workspace`. GPUs are passed with a device request when the job
asks for one and the host has NVIDIA devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container
from docker.types import DeviceRequest, LogConfig, Ulimit

from torchdoctor.sandbox.capture import CappedStream, OutputBudget
from torchdoctor.sandbox.collect import collect_files
from torchdoctor.sandbox.environment import job_environment
from torchdoctor.sandbox.mechanisms import NAMESPACES, gpu_device_nodes
from torchdoctor.sandbox.models import Isolation, Job, Limits, ResourceUsage, RunResult
from torchdoctor.sandbox.outcome import Stop, classify
from torchdoctor.sandbox.shared_cache import prepare_cache
from torchdoctor.sandbox.workspace import (
    WorkspaceError,
    hand_over,
    kernel_quota,
    over_quota,
    remove_workspace,
    stage_workspace,
    sweep_stale_copies,
    tree_usage,
)

if TYPE_CHECKING:
    from torchdoctor.sandbox.config import DockerConfig

WAIT_SLICE_S = 0.25
LABEL = "torchdoctor.sandbox"
EXEC_STRINGS_MAX = 6 * 1024 * 1024
"""The most bytes of argument strings any Linux exec takes, whatever the stack limit (3/4 of
_STK_LIM, fs/exec.c since 4.13): a longer command line can never start, and the engine would
spend seconds storing, returning and deleting a container config that size first."""


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
        sweep_stale_copies([self._root])  # what a killed predecessor left there

    @property
    def isolation(self) -> Isolation:
        return self._describe(gpu=self._gpu_wanted(True), rlimits={})

    def run(self, job: Job) -> RunResult:
        size = sum(len(os.fsencode(arg)) + 1 for arg in job.argv(self.config.python))
        if size > EXEC_STRINGS_MAX:
            reason = f"the command line's {size:,} bytes are more than the kernel takes"
            return RunResult.sandbox_error(reason, self.isolation)
        self._root.mkdir(mode=0o711, parents=True, exist_ok=True)
        try:
            workspace = stage_workspace(job.workspace, self._root, quota_mb=job.limits.disk_mb)
        except WorkspaceError as exc:
            return RunResult.sandbox_error(f"workspace refused: {exc}", self.isolation)
        try:
            uid, _, gid = self.config.user.partition(":")
            hand_over(workspace, int(uid), int(gid or uid))
            if job.cache is not None:
                job = job.model_copy(
                    update={"cache": prepare_cache(job.cache, int(uid), job.limits.disk_mb)}
                )
            return self._run_in(job, workspace)
        finally:
            remove_workspace(workspace)

    async def arun(self, job: Job) -> RunResult:
        return await asyncio.to_thread(self.run, job)

    def _run_in(self, job: Job, workspace: Path) -> RunResult:
        limits = job.limits
        gpu = self._gpu_wanted(job.gpu)
        ulimits = _ulimits(limits)
        try:
            container = self._create(job, workspace, gpu, ulimits)
        except docker.errors.APIError as exc:
            return RunResult.sandbox_error(
                f"the engine refused the job: {exc.explanation or exc}",
                self._describe(gpu=gpu, rlimits={}),
            )
        stop: list[Stop] = []

        def kill(reason: Stop) -> None:
            if not stop:
                stop.append(reason)
                with contextlib.suppress(docker.errors.APIError):
                    container.kill()

        budget = OutputBudget(limits.output_bytes, lambda: None)
        out, err = CappedStream(budget), CappedStream(budget)
        try:
            attached = self._attach(container)
            reader = threading.Thread(target=_pump, args=(attached, out, err, budget), daemon=True)
            reader.start()
            started = time.monotonic()
            try:
                container.start()
            except docker.errors.APIError as exc:
                attached.close()
                reason = f"the engine could not start the job: {exc.explanation or exc}"
                return RunResult.sandbox_error(reason, self._describe(gpu=gpu, rlimits={}))
            self._wait(container, workspace, limits, started, budget, kill)
            wall = time.monotonic() - started
            reader.join(timeout=5)
            container.reload()
            state: dict[str, Any] = container.attrs["State"]
        finally:
            container.remove(force=True)
        if state.get("OOMKilled") and not stop:
            stop.append(Stop.MEMORY)
        if budget.overflowed and not stop:
            # Its output was cut, even though it ended before a poll saw that (once the
            # socket is shut the engine drops what it writes, so it can finish in a moment).
            stop.append(Stop.OUTPUT)
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
            isolation=self._describe(
                gpu=gpu,
                rlimits={u.name: int(u.soft or 0) for u in ulimits},
                limits_held=[
                    "memory and processes: kernel (the container's cgroup; tmpfs /tmp counts)",
                    "disk: kernel (workspace on a size-capped tmpfs)"
                    if kernel_quota(workspace)
                    else "disk: workspace usage polled every 0.5 s, RLIMIT_FSIZE per file",
                ],
            ),
        )

    def _create(self, job: Job, workspace: Path, gpu: bool, ulimits: list[Ulimit]) -> Container:
        limits = job.limits
        workdir = self.config.workdir
        volumes = {str(p): {"bind": str(p), "mode": "ro"} for p in self.config.read_only}
        volumes[str(workspace)] = {"bind": workdir, "mode": "rw"}
        if job.cache is not None:  # at its host path, which the job's environment names
            volumes[str(job.cache)] = {"bind": str(job.cache), "mode": "rw"}
        env = job_environment(
            os.environ, job.env, home=workdir, path=self.config.path, tmpdir="/tmp"
        )
        requests_ = [DeviceRequest(count=-1, capabilities=[["gpu"]])] if gpu else []
        return self.client.containers.create(
            self.config.image,
            command=job.argv(self.config.python),
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
            log_config=LogConfig(type=LogConfig.types.NONE),
            labels={LABEL: "1"},
            detach=True,
        )

    def _attach(self, container: Container) -> socket.socket:
        """The raw multiplexed output socket, attached before the start so nothing is missed."""
        params = {"stdout": 1, "stderr": 1, "stream": 1}
        raw = self.client.api.attach_socket(str(container.id), params=params)
        sock = getattr(raw, "_sock", raw)
        if not isinstance(sock, socket.socket):
            raise RuntimeError(f"unsupported Docker transport for attach: {type(raw).__name__}")
        return sock

    def _wait(
        self,
        container: Container,
        workspace: Path,
        limits: Limits,
        started: float,
        budget: OutputBudget,
        kill: Callable[[Stop], None],
    ) -> None:
        while True:
            try:
                container.wait(timeout=WAIT_SLICE_S)
                return
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                pass
            if budget.overflowed:
                kill(Stop.OUTPUT)
            elif time.monotonic() - started >= limits.wall_s:
                kill(Stop.WALL)
            elif over_quota(tree_usage(workspace), limits.disk_mb, limits.max_files):
                kill(Stop.DISK)

    def _gpu_wanted(self, requested: bool) -> bool:
        if self.config.gpus == "none" or not requested:
            return False
        return self.config.gpus == "all" or bool(gpu_device_nodes())

    def _describe(
        self, *, gpu: bool, rlimits: dict[str, int], limits_held: list[str] | None = None
    ) -> Isolation:
        return Isolation(
            backend="docker",
            mechanism="docker",
            namespaces=list(NAMESPACES),
            user=f"{self.config.user} (non-root, no capabilities, no-new-privileges)",
            rlimits=rlimits,
            network="none",
            filesystem="read-only image root; writable: workspace bind, tmpfs /tmp",
            gpu=gpu,
            limits_held=limits_held or [],
        )


def _ulimits(limits: Limits) -> list[Ulimit]:
    return [
        Ulimit(name="cpu", soft=limits.cpu_s, hard=limits.cpu_s + 1),
        Ulimit(name="fsize", soft=limits.file_size_mb * 2**20, hard=limits.file_size_mb * 2**20),
        Ulimit(name="nofile", soft=limits.open_files, hard=limits.open_files),
        Ulimit(name="core", soft=0, hard=0),
    ]


def _pump(sock: socket.socket, out: CappedStream, err: CappedStream, budget: OutputBudget) -> None:
    """Demultiplex the attach stream (8-byte frame headers: stream id, size) into the capped
    streams. Once the budget is spent the socket is shut: the engine stops copying output and
    the kill that follows is not held up by a job blocked writing to it."""
    try:
        while not budget.overflowed:
            header = _recv_exactly(sock, 8)
            if len(header) < 8:
                return
            payload = _recv_exactly(sock, int.from_bytes(header[4:8], "big"))
            (err if header[0] == 2 else out).feed(payload)
    except OSError:
        return
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, missing = [], size
    while missing:
        chunk = sock.recv(min(missing, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)
