"""The ways the local backend can confine a process, strongest first, and the command line each
one needs. Which one is used is decided by probing (see `torchdoctor.sandbox.local`), never assumed.

- bwrap: new PID, network, mount, IPC and UTS namespaces; a root made of read-only binds of the
  system, the interpreter and this package; only the workspace, a private /tmp and the audit's
  shared compiler cache (when it has one) writable.
- unshare: the same namespaces from util-linux; the host filesystem stays visible (writes are
  limited by the job's unprivileged uid) and /tmp, /var/tmp, /dev/shm are private tmpfs.
- rlimits: no namespaces at all; only resource limits, the job's uid and the final sweep.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

LAUNCHER = Path(__file__).with_name("launch.py")
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_ENTRIES = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "passwd",
    "group",
    "nsswitch.conf",
    "hosts",
    "localtime",
    "alternatives",
    "ssl",
    "ca-certificates",
    "os-release",
)
HIDDEN_DIRS = ("/root", "/home", "/run", "/var/lib", "/var/spool", "/mnt", "/media", "/srv")
"""Private data and the usual homes of service sockets, covered by empty tmpfs under unshare."""
UNIX_SOCKETS = Path("/proc/net/unix")
NAMESPACES = ["pid", "net", "mount", "ipc", "uts"]


class Mechanism(StrEnum):
    BWRAP = "bwrap"
    UNSHARE = "unshare"
    RLIMITS = "rlimits"

    @property
    def tool(self) -> str | None:
        return {Mechanism.BWRAP: "bwrap", Mechanism.UNSHARE: "unshare"}.get(self)


@dataclass(frozen=True)
class Layout:
    """What of the host a job needs to see: interpreter trees and extra read-only folders."""

    python: str
    read_only: tuple[str, ...]
    privileged: bool
    gpu_nodes: tuple[str, ...] = field(default_factory=tuple)
    writable: tuple[str, ...] = field(default_factory=tuple)
    """Folders beside the workspace the job may write (a shared compiler cache)."""
    links: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    """Symbolic links (path, target) made in the job's private /tmp (`shared_cache.tmp_links`)."""


@dataclass(frozen=True)
class LaunchSpec:
    """Everything `launch.py` needs, serialised to JSON on its command line."""

    workspace: str
    uid: int | None
    rlimits: dict[str, int]
    private_tmp_mb: int
    init: bool
    read_only: tuple[str, ...] = ()
    writable: tuple[str, ...] = ()
    hide: tuple[str, ...] = ()
    masked_sockets: tuple[str, ...] = ()
    links: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> str:
        return json.dumps(
            {
                "workspace": self.workspace,
                "uid": self.uid,
                "gid": self.uid,
                "rlimits": self.rlimits,
                "private_tmp_mb": self.private_tmp_mb,
                "init": self.init,
                "read_only": list(self.read_only),
                "writable": list(self.writable),
                "hide": list(self.hide),
                "masked_sockets": list(self.masked_sockets),
                "links": [list(link) for link in self.links],
            }
        )


def gpu_device_nodes() -> tuple[str, ...]:
    return tuple(sorted(glob.glob("/dev/nvidia*") + glob.glob("/dev/nvidia-caps/*")))


def command(
    mechanism: Mechanism, layout: Layout, spec: LaunchSpec, tmp_mb: int, argv: list[str]
) -> list[str]:
    launcher = [layout.python, "-I", "-S", str(LAUNCHER), spec.to_json(), "--", *argv]
    if mechanism is Mechanism.BWRAP:
        return [*_bwrap(layout, spec.workspace, tmp_mb), "--", *launcher]
    if mechanism is Mechanism.UNSHARE:
        return [*_unshare(layout.privileged), "--", *launcher]
    return launcher


def launch_spec(
    mechanism: Mechanism,
    layout: Layout,
    workspace: str,
    uid: int | None,
    rlimits: dict[str, int],
    tmp_mb: int,
) -> LaunchSpec:
    unshared = mechanism is Mechanism.UNSHARE
    return LaunchSpec(
        workspace=workspace,
        uid=uid,
        rlimits=rlimits,
        private_tmp_mb=tmp_mb if unshared else 0,
        init=unshared,
        read_only=layout.read_only if unshared else (),
        writable=layout.writable if unshared else (),
        hide=HIDDEN_DIRS if unshared else (),
        masked_sockets=host_socket_paths() if unshared else (),
        links=layout.links if unshared else (),
    )


def host_socket_paths(table: Path = UNIX_SOCKETS) -> tuple[str, ...]:
    """Every Unix socket bound to a path on this host (from the host's network namespace):
    under unshare the host filesystem stays visible, so each is covered before the job runs."""
    try:
        lines = table.read_text().splitlines()[1:]
    except OSError:
        return ()
    found = {
        parts[7] for line in lines if len(parts := line.split(None, 7)) == 8 and parts[7][:1] == "/"
    }
    return tuple(sorted(found))


def _unshare(privileged: bool) -> list[str]:
    """Root creates the namespaces directly; anyone else needs a user namespace first."""
    user = [] if privileged else ["--user", "--map-root-user"]
    return [
        shutil.which("unshare") or "unshare",
        *user,
        "--pid",
        "--net",
        "--mount",
        "--ipc",
        "--uts",
        "--fork",
        "--kill-child",
        "--mount-proc",
        "--propagation",
        "private",
    ]


def _bwrap(layout: Layout, workspace: str, tmp_mb: int) -> list[str]:
    args = [
        shutil.which("bwrap") or "bwrap",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "sandbox",
    ]
    if layout.privileged:
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    for directory in SYSTEM_DIRS:
        if os.path.islink(directory):
            args += ["--symlink", os.readlink(directory), directory]
        elif os.path.isdir(directory):
            args += ["--ro-bind", directory, directory]
    for entry in ETC_ENTRIES:
        args += ["--ro-bind-try", f"/etc/{entry}", f"/etc/{entry}"]
    args += ["--proc", "/proc", "--dev", "/dev"]
    for scratch in ("/tmp", "/dev/shm"):
        args += ["--perms", "1777", "--size", str(tmp_mb * 2**20), "--tmpfs", scratch]
    for link, target in layout.links:
        args += ["--symlink", target, link]
    for ancestor in _ancestors([*layout.read_only, *layout.writable, workspace]):
        args += ["--perms", "0755", "--dir", ancestor]
    for root in layout.read_only:
        args += ["--ro-bind", root, root]
    for folder in layout.writable:
        args += ["--bind", folder, folder]
    if layout.gpu_nodes:
        for node in layout.gpu_nodes:
            args += ["--dev-bind", node, node]
        args += ["--ro-bind", "/sys", "/sys"]
    args += ["--bind", workspace, workspace, "--chdir", workspace]
    return args


def _ancestors(paths: list[str]) -> list[str]:
    """Folders bwrap must create, traversable, above the bind targets (it makes them 0700)."""
    found: set[str] = set()
    for path in paths:
        for parent in map(str, Path(path).parents):
            under_system = any(parent == d or parent.startswith(d + "/") for d in SYSTEM_DIRS)
            if parent not in ("/", "/tmp", "/dev", "/proc", "/etc") and not under_system:
                found.add(parent)
    return sorted(found)
