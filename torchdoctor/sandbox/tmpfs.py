"""Size-capped tmpfs for job workspaces: the kernel refuses writes past the disk quota.

Mounting needs CAP_SYS_ADMIN on the host (the service runs as root, or in a container that
grants it); elsewhere `mount_tmpfs` says no and the workspace stays on the disk, its usage then
polled by the supervisor. A tmpfs page the job writes is also charged to the job's memory
cgroup, so the workspace counts against the memory limit too where that is kernel-held.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from torchdoctor.sandbox.lifeline import libc

MS_NOSUID, MS_NODEV = 2, 4
MNT_DETACH, UMOUNT_NOFOLLOW = 2, 8


def mount_tmpfs(path: Path, size_mb: int, mode: int = 0o700) -> bool:
    """Mount a tmpfs of `size_mb` on the empty folder `path`; False where not permitted."""
    if os.geteuid() != 0 or (found := libc()) is None:
        return False
    options = f"size={size_mb}m,mode={mode:o}".encode()
    flags = ctypes.c_ulong(MS_NOSUID | MS_NODEV)
    return bool(found.mount(b"tmpfs", os.fsencode(path), b"tmpfs", flags, options) == 0)


def unmount(path: Path) -> None:
    """Detach a mount (its files vanish with it); quiet when `path` is not a mount point. A
    link at `path` is not followed."""
    if os.path.ismount(path) and (found := libc()) is not None:
        found.umount2(os.fsencode(path), MNT_DETACH | UMOUNT_NOFOLLOW)
