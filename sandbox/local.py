"""The `local` backend: the strongest isolation this host allows, found by probing at start-up.

Each job gets a fresh copy of its workspace owned by a uid of its own, runs under the chosen
mechanism (bwrap, unshare or bare rlimits) through `launch.py`, and is watched from here: wall
clock, resident memory of all its processes, bytes written to its workspace, and its output.
Whatever ends the job, every process of that uid is killed before the workspace is read back
and removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from sandbox.capture import CappedStream, OutputBudget
from sandbox.collect import collect_files
from sandbox.environment import job_environment
from sandbox.mechanisms import (
    Layout,
    Mechanism,
    command,
    describe,
    gpu_device_nodes,
    launch_spec,
)
from sandbox.models import Isolation, Job, Limits, Outcome, ResourceUsage, RunResult
from sandbox.outcome import Stop, classify, error_result
from sandbox.processes import JobIdentity, job_pids, resident_mb, sweep
from sandbox.workspace import (
    hand_over,
    remove_owned_files,
    remove_workspace,
    stage_workspace,
    tree_bytes,
)

if TYPE_CHECKING:
    from sandbox.config import LocalConfig

SHARED_SCRATCH = ("/tmp", "/var/tmp", "/dev/shm")
POLL_S = 0.05
DISK_POLL_S = 0.5
PROBE_SCRIPT = (
    "import os, socket; print(os.getuid(), ','.join(sorted(n for _, n in socket.if_nameindex())))"
)


class SandboxUnavailable(RuntimeError):
    """No isolation mechanism that the configuration accepts works on this host."""


@dataclass
class ProbeResult:
    mechanism: Mechanism
    works: bool
    detail: str


class UidPool:
    """Hands out uids nobody else uses, one per running job."""

    def __init__(self, base: int, count: int) -> None:
        self._base, self._count = base, count
        self._taken: set[int] = set()
        self._lock = threading.Lock()

    def acquire(self) -> int:
        with self._lock:
            for _ in range(self._count):
                uid = self._base + random.randrange(self._count)
                if uid not in self._taken and not job_pids(JobIdentity(uid, -1)):
                    self._taken.add(uid)
                    return uid
        raise SandboxUnavailable("no free job uid left")

    def release(self, uid: int) -> None:
        with self._lock:
            self._taken.discard(uid)


@dataclass
class _Watch:
    """Mutable state of one run shared between the monitor and the reader threads."""

    stop: Stop | None = None
    peak_rss_mb: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def request(self, reason: Stop) -> bool:
        with self.lock:
            if self.stop is None:
                self.stop = reason
                return True
            return False


class LocalSandbox:
    """A `Sandbox` that confines jobs on this host."""

    def __init__(self, config: LocalConfig) -> None:
        self.config = config
        self.privileged = os.geteuid() == 0
        self._uids = UidPool(config.uid_base, config.uid_count)
        self._root = config.run_root or Path(f"/tmp/torchdoctor-sandbox-{os.getuid()}")
        self._layout = Layout(
            python=str(config.python),
            read_only=_read_only_roots(config),
            privileged=self.privileged,
        )
        self._mechanism: Mechanism | None = None
        self.probes: list[ProbeResult] = []
        self._probe_lock = threading.Lock()

    @property
    def mechanism(self) -> Mechanism:
        with self._probe_lock:
            if self._mechanism is None:
                self._mechanism = self._choose()
            return self._mechanism

    @property
    def isolation(self) -> Isolation:
        user = "a fresh unprivileged uid per job" if self.privileged else None
        return describe(self.mechanism, job_user=user, gpu=bool(gpu_device_nodes()))

    def run(self, job: Job) -> RunResult:
        return self._execute(job, self.mechanism)

    async def arun(self, job: Job) -> RunResult:
        return await asyncio.to_thread(self.run, job)

    def probe(self, mechanism: Mechanism) -> ProbeResult:
        """Run a tiny command under `mechanism` and check uid and network are as promised."""
        if mechanism.tool and shutil.which(mechanism.tool) is None:
            return ProbeResult(mechanism, False, f"{mechanism.tool} is not installed")
        scratch = Path(tempfile.mkdtemp(prefix="td-probe-"))
        try:
            job = Job(
                workspace=scratch,
                command=[str(self.config.python), "-I", "-c", PROBE_SCRIPT],
                limits=Limits(wall_s=20, cpu_s=10, memory_mb=512, processes=32),
            )
            result = self._execute(job, mechanism)
        finally:
            remove_workspace(scratch)
        if result.outcome is not Outcome.OK:
            detail = (result.stderr or result.reason).strip().splitlines()
            return ProbeResult(mechanism, False, detail[-1] if detail else result.reason)
        uid_text, _, interfaces = result.stdout.strip().partition(" ")
        if self.privileged and int(uid_text) == 0:
            return ProbeResult(mechanism, False, "the job kept uid 0")
        if mechanism is not Mechanism.RLIMITS and interfaces != "lo":
            return ProbeResult(mechanism, False, f"network not isolated: {interfaces}")
        return ProbeResult(mechanism, True, f"uid {uid_text}, interfaces: {interfaces or '-'}")

    def _choose(self) -> Mechanism:
        wanted = self.config.mechanism
        candidates = list(Mechanism) if wanted == "auto" else [Mechanism(wanted)]
        for candidate in candidates:
            result = self.probe(candidate)
            self.probes.append(result)
            if result.works:
                return candidate
        tried = "; ".join(f"{p.mechanism}: {p.detail}" for p in self.probes)
        raise SandboxUnavailable(f"no isolation mechanism works here ({tried})")

    def _execute(self, job: Job, mechanism: Mechanism) -> RunResult:
        self._root.mkdir(mode=0o711, parents=True, exist_ok=True)
        uid = self._uids.acquire() if self.privileged else None
        workspace = stage_workspace(job.workspace, self._root)
        try:
            if uid is not None:
                hand_over(workspace, uid, uid)
            return self._supervise(job, mechanism, workspace, uid)
        finally:
            remove_workspace(workspace)
            if uid is not None:
                self._uids.release(uid)

    def _supervise(
        self, job: Job, mechanism: Mechanism, workspace: Path, uid: int | None
    ) -> RunResult:
        limits = job.limits
        nodes = gpu_device_nodes() if job.gpu else ()
        layout = Layout(self._layout.python, self._layout.read_only, self.privileged, nodes)
        rlimits = self._rlimits(limits, job.gpu)
        spec = launch_spec(mechanism, layout, str(workspace), uid, rlimits, limits.disk_mb)
        tmpdir = str(workspace / ".tmp") if mechanism is Mechanism.RLIMITS else "/tmp"
        if mechanism is Mechanism.RLIMITS:
            (workspace / ".tmp").mkdir(exist_ok=True)
            if uid is not None:
                os.chown(workspace / ".tmp", uid, uid)
        env = job_environment(
            os.environ,
            job.env,
            home=str(workspace),
            path=f"{Path(self.config.python).parent}:/usr/local/bin:/usr/bin:/bin",
            tmpdir=tmpdir,
        )
        argv = command(mechanism, layout, spec, limits.disk_mb, job.command)
        watch = _Watch()
        started = time.monotonic()
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            isolation = describe(mechanism, job_user=_job_user(uid), gpu=bool(nodes))
            return error_result(f"the job could not be started: {exc.strerror}", isolation)
        identity = JobIdentity(uid, process.pid)

        def kill(reason: Stop) -> None:
            if watch.request(reason):
                _kill_job(process.pid, identity)

        budget = OutputBudget(limits.output_bytes, lambda: kill(Stop.OUTPUT))
        out, err = CappedStream(budget), CappedStream(budget)
        readers = [_reader(out, process.stdout), _reader(err, process.stderr)]
        status, rusage = self._monitor(process.pid, identity, workspace, limits, watch, kill)
        process.returncode = status
        wall = time.monotonic() - started
        sweep(identity)
        if mechanism is Mechanism.RLIMITS and uid is not None:
            remove_owned_files(SHARED_SCRATCH, uid)
        for reader in readers:
            reader.join(timeout=5)
        files = collect_files(workspace, job.collect, limits.collect_bytes)
        exit_code, signal_number = _decode(status, namespaced=mechanism is not Mechanism.RLIMITS)
        cpu = rusage.ru_utime + rusage.ru_stime
        stderr = err.text()
        outcome, reason = classify(
            stop=watch.stop,
            exit_code=exit_code,
            signal_number=signal_number,
            stderr=stderr,
            cpu_s=cpu,
            cpu_limit_s=limits.cpu_s,
        )
        isolation = describe(mechanism, job_user=_job_user(uid), gpu=bool(nodes)).model_copy(
            update={"rlimits": rlimits}
        )
        return RunResult(
            outcome=outcome,
            exit_code=exit_code,
            signal=signal_number,
            reason=reason,
            stdout=out.text(),
            stderr=stderr,
            output_truncated=out.truncated or err.truncated,
            files=files,
            usage=ResourceUsage(
                wall_s=round(wall, 3),
                user_cpu_s=round(rusage.ru_utime, 3),
                system_cpu_s=round(rusage.ru_stime, 3),
                peak_memory_mb=round(max(watch.peak_rss_mb, rusage.ru_maxrss / 1024), 1),
            ),
            isolation=isolation,
        )

    def _rlimits(self, limits: Limits, gpu: bool) -> dict[str, int]:
        rlimits = {
            "CPU": limits.cpu_s,
            "NPROC": limits.processes,
            "FSIZE": limits.file_size_mb * 2**20,
            "NOFILE": limits.open_files,
            "CORE": 0,
        }
        if not gpu:
            rlimits["AS"] = limits.memory_mb * self.config.address_space_factor * 2**20
        return rlimits

    def _monitor(
        self,
        pid: int,
        identity: JobIdentity,
        workspace: Path,
        limits: Limits,
        watch: _Watch,
        kill: Callable[[Stop], None],
    ) -> tuple[int, resource.struct_rusage]:
        deadline = time.monotonic() + limits.wall_s
        next_disk = 0.0
        while True:
            done, status, rusage = os.wait4(pid, os.WNOHANG)
            if done:
                return status, rusage
            now = time.monotonic()
            if now >= deadline:
                kill(Stop.WALL)
            rss = resident_mb(job_pids(identity))
            watch.peak_rss_mb = max(watch.peak_rss_mb, rss)
            if rss > limits.memory_mb:
                kill(Stop.MEMORY)
            if now >= next_disk:
                next_disk = now + DISK_POLL_S
                if tree_bytes(workspace) > limits.disk_mb * 2**20:
                    kill(Stop.DISK)
            time.sleep(POLL_S)


def _read_only_roots(config: LocalConfig) -> tuple[str, ...]:
    """The interpreter's prefixes, this package and the configured folders, outermost only."""
    probe = subprocess.run(
        [
            str(config.python),
            "-I",
            "-c",
            "import sys; print('\\n'.join({sys.prefix, sys.base_prefix, sys.exec_prefix}))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    roots = {os.path.realpath(line) for line in probe.stdout.splitlines() if line}
    roots |= {line for line in probe.stdout.splitlines() if line}
    roots.add(str(Path(__file__).resolve().parent))
    roots |= {str(Path(p).resolve()) for p in config.read_only}
    ordered = sorted(roots)
    return tuple(r for r in ordered if not any(r.startswith(o + "/") for o in ordered if o != r))


def _job_user(uid: int | None) -> str | None:
    return f"uid {uid} (unprivileged, this job only)" if uid is not None else None


def _reader(stream: CappedStream, pipe: IO[bytes] | None) -> threading.Thread:
    assert pipe is not None
    thread = threading.Thread(target=_drain_and_close, args=(stream, pipe), daemon=True)
    thread.start()
    return thread


def _drain_and_close(stream: CappedStream, pipe: IO[bytes]) -> None:
    with pipe:
        stream.drain(pipe)  # type: ignore[arg-type]


def _kill_job(leader: int, identity: JobIdentity) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader, signal.SIGKILL)
    sweep(identity, deadline_s=1.0)


def _decode(status: int, *, namespaced: bool) -> tuple[int | None, int | None]:
    """Exit code or signal; namespace inits report a child's death by signal as 128 + N."""
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    code = os.WEXITSTATUS(status)
    if namespaced and 128 < code < 128 + 65:
        return None, code - 128
    return code, None
