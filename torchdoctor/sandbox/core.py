"""The local backend's engine, standard library only: probe, stage, launch, watch, sweep.

Kept free of pydantic so that a bare GPU machine with only torch can run it
(`benchmarks/sandbox_gpu.py`); `torchdoctor.sandbox.local` wraps it in the typed `Sandbox` protocol.

Each run gets a fresh copy of its workspace owned by a uid of its own, runs under the chosen
mechanism (bwrap, unshare or bare rlimits) through `launch.py`, and is watched from here: wall
clock, resident memory of all its processes, bytes written to its workspace, and its output.
Whatever ends the run, every process of that uid is killed before the workspace is read back
and removed.
"""

from __future__ import annotations

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from torchdoctor.sandbox.capture import CappedStream, OutputBudget
from torchdoctor.sandbox.cgroups import JobCgroup
from torchdoctor.sandbox.environment import job_environment
from torchdoctor.sandbox.lifeline import die_with_parent
from torchdoctor.sandbox.mechanisms import Layout, Mechanism, command, gpu_device_nodes, launch_spec
from torchdoctor.sandbox.outcome import Outcome, Stop, classify
from torchdoctor.sandbox.processes import JobIdentity, cpu_seconds, job_pids, resident_mb, sweep
from torchdoctor.sandbox.shared_cache import prepare_cache, tmp_links
from torchdoctor.sandbox.workspace import (
    hand_over,
    kernel_quota,
    over_quota,
    remove_owned_files,
    remove_workspace,
    stage_workspace,
    sweep_stale_copies,
    tree_usage,
)

SHARED_SCRATCH = ("/tmp", "/var/tmp", "/dev/shm")
POLL_S = 0.05
DISK_POLL_S = 0.5
PROBE_SCRIPT = (
    "import os, socket; print(os.getuid(), ','.join(sorted(n for _, n in socket.if_nameindex())))"
)


class SandboxUnavailable(RuntimeError):
    """No isolation mechanism that the configuration accepts works on this host."""


@dataclass(frozen=True)
class RunLimits:
    """The limits of one run (mirrors `torchdoctor.sandbox.models.Limits`, without pydantic)."""

    wall_s: float = 60.0
    cpu_s: int = 60
    memory_mb: int = 2048
    processes: int = 512
    file_size_mb: int = 256
    disk_mb: int = 512
    max_files: int = 100_000
    open_files: int = 1024
    output_bytes: int = 1_000_000


@dataclass
class RunReport:
    """How a run ended, what it printed and used, and the rlimits it ran under."""

    mechanism: Mechanism
    uid: int | None
    gpu_nodes: tuple[str, ...]
    outcome: Outcome
    reason: str
    exit_code: int | None = None
    signal: int | None = None
    stdout: str = ""
    stderr: str = ""
    truncated: bool = False
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_mb: float = 0.0
    rlimits: dict[str, int] = field(default_factory=dict)
    held_by: list[str] = field(default_factory=list)
    """How memory, processes and disk were held for this run (kernel or watch)."""


def held_by(cgroup: JobCgroup | None, workspace: Path) -> list[str]:
    """How the run's limits are held, for its isolation record."""
    memory = (
        f"memory and processes: kernel (cgroup {cgroup.version}; tmpfs pages count)"
        if cgroup is not None
        else "memory: resident-set watch every 0.2 s; processes: RLIMIT_NPROC"
    )
    disk = (
        "disk: kernel (workspace on a size-capped tmpfs)"
        if kernel_quota(workspace)
        else "disk: workspace usage polled every 0.5 s, RLIMIT_FSIZE per file"
    )
    return [memory, disk]


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
    cpu_by_pid: dict[int, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def request(self, reason: Stop) -> bool:
        with self.lock:
            if self.stop is None:
                self.stop = reason
                return True
            return False


class LocalRunner:
    """Confines processes on this host with the strongest mechanism that works here."""

    def __init__(
        self,
        *,
        python: str,
        mechanism: str = "auto",
        read_only: Sequence[str] = (),
        run_root: Path | None = None,
        uid_base: int = 200_000,
        uid_count: int = 50_000,
        address_space_factor: int = 4,
    ) -> None:
        self.python = python
        self.wanted = mechanism
        self.privileged = os.geteuid() == 0
        self.address_space_factor = address_space_factor
        self.run_root = run_root or Path(f"/tmp/torchdoctor-sandbox-{os.getuid()}")
        self.layout = Layout(python, read_only_roots(python, read_only), self.privileged)
        self.probes: list[ProbeResult] = []
        self._uids = UidPool(uid_base, uid_count)
        self._mechanism: Mechanism | None = None
        self._lock = threading.Lock()
        # what a killed predecessor left in the run root (a custom one, or one on another
        # machine, is not among the folders `audit.clean_after_crashes` sweeps)
        sweep_stale_copies([self.run_root])

    @property
    def mechanism(self) -> Mechanism:
        with self._lock:
            if self._mechanism is None:
                self._mechanism = self._choose()
            return self._mechanism

    def probe(self, mechanism: Mechanism) -> ProbeResult:
        """Run a tiny command under `mechanism` and check uid and network are as promised."""
        if mechanism.tool and shutil.which(mechanism.tool) is None:
            return ProbeResult(mechanism, False, f"{mechanism.tool} is not installed")
        scratch = Path(tempfile.mkdtemp(prefix="td-probe-"))
        try:
            argv = [self.python, "-I", "-c", PROBE_SCRIPT]
            limits = RunLimits(wall_s=20, cpu_s=10, memory_mb=512, processes=32)
            report = self.execute(scratch, argv, {}, limits, mechanism=mechanism)
        finally:
            remove_workspace(scratch)
        if report.outcome is not Outcome.OK:
            lines = (report.stderr or report.reason).strip().splitlines()
            detail = lines[-1] if lines else report.reason
            if "Permission denied" in detail and mechanism is Mechanism.RLIMITS:
                detail += " (the job's uid cannot reach the interpreter without a mount namespace)"
            return ProbeResult(mechanism, False, detail)
        uid_text, _, interfaces = report.stdout.strip().partition(" ")
        if self.privileged and int(uid_text) == 0:
            return ProbeResult(mechanism, False, "the job kept uid 0")
        if mechanism is not Mechanism.RLIMITS and interfaces != "lo":
            return ProbeResult(mechanism, False, f"network not isolated: {interfaces}")
        return ProbeResult(mechanism, True, f"uid {uid_text}, interfaces: {interfaces or '-'}")

    def _choose(self) -> Mechanism:
        candidates = list(Mechanism) if self.wanted == "auto" else [Mechanism(self.wanted)]
        for candidate in candidates:
            result = self.probe(candidate)
            self.probes.append(result)
            if result.works:
                return candidate
        tried = "; ".join(f"{p.mechanism}: {p.detail}" for p in self.probes)
        raise SandboxUnavailable(f"no isolation mechanism works here ({tried})")

    def execute(
        self,
        source: Path,
        argv: list[str],
        env: Mapping[str, str],
        limits: RunLimits,
        *,
        gpu: bool = False,
        mechanism: Mechanism | None = None,
        cache: Path | None = None,
        before_cleanup: Callable[[Path], None] | None = None,
    ) -> RunReport:
        """Copy `source` into a fresh workspace, run `argv` there confined, then clean up.

        `cache`: a folder kept across runs that this one may also write (`shared_cache`).
        `before_cleanup` sees the workspace after every process of the run is dead and before
        it is removed (to collect result files).
        """
        chosen = mechanism or self.mechanism
        self.run_root.mkdir(mode=0o711, parents=True, exist_ok=True)
        uid = self._uids.acquire() if self.privileged else None
        workspace = stage_workspace(source, self.run_root, quota_mb=limits.disk_mb)
        try:
            if uid is not None:
                hand_over(workspace, uid, uid)
            if cache is not None:
                cache = prepare_cache(cache, uid, limits.disk_mb)
            report = self._supervise(chosen, workspace, uid, argv, env, limits, gpu, cache)
            if before_cleanup is not None:
                before_cleanup(workspace)
            return report
        finally:
            remove_workspace(workspace)
            if uid is not None:
                self._uids.release(uid)

    def rlimits(self, limits: RunLimits, gpu: bool) -> dict[str, int]:
        """The kernel limits; no address-space cap for GPU runs (CUDA reserves huge ranges),
        whose memory is held by the resident-set watch instead."""
        values = {
            "CPU": limits.cpu_s,
            "NPROC": limits.processes,
            "FSIZE": limits.file_size_mb * 2**20,
            "NOFILE": limits.open_files,
            "CORE": 0,
        }
        if not gpu:
            values["AS"] = limits.memory_mb * self.address_space_factor * 2**20
        return values

    def _supervise(
        self,
        mechanism: Mechanism,
        workspace: Path,
        uid: int | None,
        argv: list[str],
        requested_env: Mapping[str, str],
        limits: RunLimits,
        gpu: bool,
        cache: Path | None,
    ) -> RunReport:
        nodes = gpu_device_nodes() if gpu else ()
        writable = (str(cache),) if cache is not None else ()
        tmpdir = self._tmpdir(mechanism, workspace, uid)
        links = tmp_links(cache, tmpdir)
        if mechanism is Mechanism.RLIMITS:  # its temporary folder is the host's, made here
            for link, target in links:
                if not os.path.lexists(link):  # an earlier job's entry: it just rebuilds
                    os.symlink(target, link)
        layout = Layout(
            self.layout.python, self.layout.read_only, self.privileged, nodes, writable, links
        )
        rlimits = self.rlimits(limits, gpu)
        spec = launch_spec(mechanism, layout, str(workspace), uid, rlimits, limits.disk_mb)
        report = RunReport(mechanism, uid, nodes, Outcome.SANDBOX_ERROR, "", rlimits=rlimits)
        env = job_environment(
            os.environ,
            requested_env,
            home=str(workspace),
            path=f"{Path(self.python).parent}:/usr/local/bin:/usr/bin:/bin",
            tmpdir=tmpdir,
        )
        watch = _Watch()
        cgroup = JobCgroup.create(limits.memory_mb, limits.processes)
        report.held_by = held_by(cgroup, workspace)
        try:
            return self._run_watched(
                command(mechanism, layout, spec, limits.disk_mb, argv),
                env,
                report,
                watch,
                cgroup,
                (mechanism, uid, workspace, limits),
            )
        finally:
            if cgroup is not None:
                cgroup.remove()

    def _run_watched(
        self,
        argv: list[str],
        env: dict[str, str],
        report: RunReport,
        watch: _Watch,
        cgroup: JobCgroup | None,
        job: tuple[Mechanism, int | None, Path, RunLimits],
    ) -> RunReport:
        mechanism, uid, workspace, limits = job

        def start_child() -> None:
            die_with_parent()
            if cgroup is not None:
                cgroup.join()  # before exec: nothing the job runs starts outside the group

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
                preexec_fn=start_child,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            report.reason = f"the job could not be started: {exc}"
            return report
        identity = JobIdentity(uid, process.pid)

        def kill(reason: Stop) -> None:
            if watch.request(reason):
                _kill_job(process.pid, identity)

        budget = OutputBudget(limits.output_bytes, lambda: kill(Stop.OUTPUT))
        out, err = CappedStream(budget), CappedStream(budget)
        readers = [_reader(out, process.stdout), _reader(err, process.stderr)]
        members = _members(identity, cgroup)
        status, rusage = _monitor(process.pid, members, workspace, limits, watch, kill)
        process.returncode = status
        report.wall_s = round(time.monotonic() - started, 3)
        if cgroup is not None:
            if cgroup.oom_killed():
                watch.request(Stop.MEMORY)
            watch.peak_rss_mb = max(watch.peak_rss_mb, cgroup.peak_mb())
            cgroup.kill_all()
        sweep(identity)
        if mechanism is Mechanism.RLIMITS and uid is not None:
            remove_owned_files(SHARED_SCRATCH, uid)
        for reader in readers:
            reader.join(timeout=5)
        report.exit_code, report.signal = _decode(status, mechanism is not Mechanism.RLIMITS)
        report.cpu_s = round(
            max(rusage.ru_utime + rusage.ru_stime, sum(watch.cpu_by_pid.values())), 3
        )
        report.peak_rss_mb = round(max(watch.peak_rss_mb, rusage.ru_maxrss / 1024), 1)
        report.stdout, report.stderr = out.text(), err.text()
        report.truncated = out.truncated or err.truncated
        report.outcome, report.reason = classify(
            stop=watch.stop,
            exit_code=report.exit_code,
            signal_number=report.signal,
            stderr=report.stderr,
            cpu_s=report.cpu_s,
            cpu_limit_s=limits.cpu_s,
        )
        return report

    @staticmethod
    def _tmpdir(mechanism: Mechanism, workspace: Path, uid: int | None) -> str:
        """Namespaced runs have a private /tmp; bare rlimits runs get one in the workspace."""
        if mechanism is not Mechanism.RLIMITS:
            return "/tmp"
        private = workspace / ".tmp"
        if private.is_symlink() or (private.exists() and not private.is_dir()):
            private.unlink()  # a job's link or file there must not send the host out of the tree
        private.mkdir(exist_ok=True)
        if uid is not None:
            os.chown(private, uid, uid, follow_symlinks=False)
        return str(private)


def read_only_roots(python: str, extra: Sequence[str]) -> tuple[str, ...]:
    """The interpreter's prefixes, this package and `extra` folders, outermost only."""
    probe = subprocess.run(
        [
            python,
            "-I",
            "-c",
            "import sys; print('\\n'.join({sys.prefix, sys.base_prefix, sys.exec_prefix}))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    prefixes = [line for line in probe.stdout.splitlines() if line]
    roots = set(prefixes) | {os.path.realpath(p) for p in prefixes}
    roots.add(str(Path(__file__).resolve().parent))
    roots |= {str(Path(p).resolve()) for p in extra}
    ordered = sorted(roots)
    return tuple(r for r in ordered if not any(r.startswith(o + "/") for o in ordered if o != r))


def _members(identity: JobIdentity, cgroup: JobCgroup | None) -> Callable[[], list[int]]:
    """How the watch lists the job's processes every 50 ms: the same set `job_pids` finds,
    but with a job cgroup and a uid of its own read from the group's member list (a job's
    processes cannot leave the group, and the uid is the job's alone), not from a scan of
    every process on the host (~0.5 ms a poll with 150 host processes, more on a busy one)."""
    if cgroup is None or identity.uid is None:
        return lambda: job_pids(identity)
    return lambda: [pid for pid in cgroup.pids() if identity.owns(pid)]


def _monitor(
    pid: int,
    members: Callable[[], list[int]],
    workspace: Path,
    limits: RunLimits,
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
        pids = members()
        watch.cpu_by_pid.update(cpu_seconds(pids))
        rss = resident_mb(pids)
        watch.peak_rss_mb = max(watch.peak_rss_mb, rss)
        if rss > limits.memory_mb:
            kill(Stop.MEMORY)
        if now >= next_disk:
            next_disk = now + DISK_POLL_S
            if over_quota(tree_usage(workspace), limits.disk_mb, limits.max_files):
                kill(Stop.DISK)
        time.sleep(POLL_S)


def _reader(stream: CappedStream, pipe: IO[bytes] | None) -> threading.Thread:
    assert pipe is not None
    thread = threading.Thread(target=_drain_and_close, args=(stream, pipe), daemon=True)
    thread.start()
    return thread


def _drain_and_close(stream: CappedStream, pipe: IO[bytes]) -> None:
    with pipe:
        stream.drain(pipe)


def _kill_job(leader: int, identity: JobIdentity) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader, signal.SIGKILL)
    sweep(identity, deadline_s=1.0)


def _decode(status: int, namespaced: bool) -> tuple[int | None, int | None]:
    """Exit code or signal; namespace inits report a child's death by signal as 128 + N."""
    if os.WIFSIGNALED(status):
        return None, os.WTERMSIG(status)
    code = os.WEXITSTATUS(status)
    if namespaced and 128 < code < 128 + 65:
        return None, code - 128
    return code, None
