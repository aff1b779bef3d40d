"""What the host's control groups offer a sandbox, read from /proc and /sys (nothing changed).

The local backend enforces memory by watching resident sets and processes by RLIMIT_NPROC per
job uid; a cgroup v2 subtree delegated to the service would let the kernel hold memory
(including the private tmpfs /tmp and /dev/shm a job fills, which no RSS shows) and pids
instead. `torchdoctor doctor` reports which of the two this host could provide.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class CgroupSupport:
    version: str
    """"v2", "v1" or "none"."""
    controllers: tuple[str, ...]
    own_group: str
    delegated: bool
    """Whether this process may create child groups (and so set per-job limits) in its own."""

    @property
    def summary(self) -> str:
        if self.version == "none":
            return "no cgroup filesystem: memory and pids held by the RSS watch and rlimits"
        usable = (
            self.version == "v2" and self.delegated and {"memory", "pids"} <= set(self.controllers)
        )
        how = (
            "per-job memory.max and pids.max possible"
            if usable
            else "per-job limits not possible here: memory and pids held by the RSS watch and "
            "RLIMIT_NPROC (private tmpfs counted only through their size cap)"
        )
        listed = ", ".join(self.controllers) or "none"
        return f"cgroup {self.version} (controllers: {listed}; group {self.own_group}): {how}"


def cgroup_support(root: Path = CGROUP_ROOT) -> CgroupSupport:
    unified = root / "cgroup.controllers"
    if unified.is_file():
        own = _own_group_v2()
        group_dir = root / own.lstrip("/")
        controllers = tuple(sorted(unified.read_text().split()))
        delegated = (
            os.access(group_dir, os.W_OK) and (group_dir / "cgroup.subtree_control").exists()
        )
        return CgroupSupport("v2", controllers, own, delegated)
    if root.is_dir() and any(root.iterdir()):
        controllers = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
        return CgroupSupport("v1", controllers, "/", False)
    return CgroupSupport("none", (), "/", False)


def _own_group_v2() -> str:
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:] or "/"
    except OSError:
        pass
    return "/"
