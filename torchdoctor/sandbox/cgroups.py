"""Per-job control groups: the kernel holds a job's memory and process count.

A job placed in its own memory cgroup is charged for everything it makes resident, including
the pages of the private tmpfs /tmp and /dev/shm it fills and of a tmpfs workspace, which no
resident-set reading shows; the kernel's OOM killer stops it at the limit. Used where this
process may create child groups: cgroup v2 with the memory and pids controllers delegated to
its group, or cgroup v1 hierarchies it can write (root on the host). Elsewhere the resident-set
watch and RLIMIT_NPROC hold the limits, and `torchdoctor doctor` says so.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("memory", "pids")


@dataclass(frozen=True)
class CgroupSupport:
    version: str
    """"v2", "v1" or "none"."""
    controllers: tuple[str, ...]
    own_group: str
    delegated: bool
    """Whether this process may create child groups (and so set per-job limits) in its own."""

    @property
    def usable(self) -> bool:
        return self.delegated and set(CONTROLLERS) <= set(self.controllers)

    @property
    def summary(self) -> str:
        if self.version == "none":
            return "no cgroup filesystem: memory and pids held by the RSS watch and rlimits"
        how = (
            "per-job memory and pids limits held by the kernel (tmpfs pages the job fills are "
            "charged to it)"
            if self.usable
            else "per-job limits not possible here: memory and pids held by the RSS watch and "
            "RLIMIT_NPROC (private tmpfs counted only through their size cap)"
        )
        listed = ", ".join(self.controllers) or "none"
        return f"cgroup {self.version} (controllers: {listed}; group {self.own_group}): {how}"


def cgroup_support(root: Path = CGROUP_ROOT) -> CgroupSupport:
    unified = root / "cgroup.controllers"
    if unified.is_file():
        own = _own_groups().get("", "/")
        group_dir = root / own.lstrip("/")
        controllers = tuple(sorted(unified.read_text().split()))
        delegated = (
            os.access(group_dir, os.W_OK) and (group_dir / "cgroup.subtree_control").exists()
        )
        return CgroupSupport("v2", controllers, own, delegated)
    if root.is_dir() and any(root.iterdir()):
        controllers = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
        groups = _v1_groups(root)
        delegated = len(groups) == len(CONTROLLERS) and all(
            os.access(path, os.W_OK) for path in groups.values()
        )
        return CgroupSupport(
            "v1", controllers, groups.get("memory", Path("/")).as_posix(), delegated
        )
    return CgroupSupport("none", (), "/", False)


class JobCgroup:
    """One job's groups (memory and pids), created before it starts and removed after it.

    The job joins from its own process between fork and exec (`join`), so nothing it runs
    escapes; `kill_all` reaches every process left in the groups, forked or daemonised.
    """

    def __init__(self, version: str, groups: dict[str, Path]) -> None:
        self.version = version
        self.groups = groups

    @classmethod
    def create(cls, memory_mb: int, processes: int, root: Path = CGROUP_ROOT) -> JobCgroup | None:
        """A new group with the limits set, or None where this host does not allow it."""
        support = cgroup_support(root)
        if not support.usable:
            return None
        name = f"torchdoctor-job-{uuid.uuid4().hex[:12]}"
        limit = str(memory_mb * 2**20)
        try:
            if support.version == "v2":
                group = root / support.own_group.lstrip("/") / name
                _enable_v2_controllers(group.parent)
                group.mkdir()
                job = cls("v2", {"memory": group, "pids": group})
                _write(group / "memory.max", limit)
                _write(group / "memory.swap.max", "0", optional=True)
                _write(group / "pids.max", str(processes))
            else:
                parents = _v1_groups(root)
                job = cls("v1", {c: parents[c] / name for c in CONTROLLERS})
                for group in job.groups.values():
                    group.mkdir()
                _write(job.groups["memory"] / "memory.limit_in_bytes", limit)
                _write(job.groups["memory"] / "memory.memsw.limit_in_bytes", limit, optional=True)
                _write(job.groups["pids"] / "pids.max", str(processes))
        except OSError:
            with contextlib.suppress(UnboundLocalError):
                job.remove()
            return None
        return job

    @property
    def procs_files(self) -> list[str]:
        return sorted({str(group / "cgroup.procs") for group in self.groups.values()})

    def join(self) -> None:
        """Move the calling process into the groups (run in the child before exec)."""
        for path in self.procs_files:
            with open(path, "w") as procs:
                procs.write("0")

    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of the job at the memory limit."""
        memory = self.groups["memory"]
        name = "memory.events" if self.version == "v2" else "memory.oom_control"
        counts = _key_values(memory / name)
        if "oom_kill" in counts:
            return counts["oom_kill"] > 0
        return _read_int(memory / "memory.failcnt") > 0  # v1 kernels without the counter

    def peak_mb(self) -> float:
        memory = self.groups["memory"]
        name = "memory.peak" if self.version == "v2" else "memory.max_usage_in_bytes"
        return round(_read_int(memory / name) / 2**20, 1)

    def pids(self) -> list[int]:
        found: set[int] = set()
        for path in self.procs_files:
            with contextlib.suppress(OSError):
                found |= {int(p) for p in Path(path).read_text().split()}
        return sorted(found)

    def kill_all(self) -> None:
        for _ in range(50):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def remove(self) -> None:
        self.kill_all()
        for group in self.groups.values():
            for _ in range(100):
                try:
                    group.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # busy until the last killed process is reaped
                    os.sched_yield()


def _own_groups() -> dict[str, str]:
    """Controller (v1) or "" (v2) -> this process's group path."""
    groups: dict[str, str] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return groups
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            groups[controller] = path or "/"
    return groups


def _v1_groups(root: Path) -> dict[str, Path]:
    own = _own_groups()
    return {
        controller: root / controller / own[controller].lstrip("/")
        for controller in CONTROLLERS
        if controller in own and (root / controller).is_dir()
    }


def _enable_v2_controllers(parent: Path) -> None:
    enabled = (parent / "cgroup.subtree_control").read_text().split()
    missing = [c for c in CONTROLLERS if c not in enabled]
    if missing:
        _write(parent / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))


def _write(path: Path, value: str, *, optional: bool = False) -> None:
    try:
        path.write_text(value)
    except OSError:
        if not optional:
            raise


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _key_values(path: Path) -> dict[str, int]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    values: dict[str, int] = {}
    for line in lines:
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            values[key] = int(value)
    return values
