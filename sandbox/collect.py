"""Bring a job's output files back, without letting the job choose what the service reads.

Runs only after every process of the job is dead. A collected path must be a regular file that
resolves inside the workspace: a job that replaced a file or a folder by a symlink to `/etc`
gets nothing back for it. Each content is capped at `Limits.collect_bytes`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sandbox.models import CollectedFile


def collect_files(workspace: Path, patterns: list[str], cap: int) -> list[CollectedFile]:
    root = workspace.resolve()
    found: dict[str, CollectedFile] = {}
    for pattern in patterns:
        for path in sorted(root.glob(pattern)):
            relative = path.relative_to(root).as_posix()
            if relative not in found and _inside(path, root):
                collected = _read_capped(path, relative, cap)
                if collected is not None:
                    found[relative] = collected
    return list(found.values())


def _inside(path: Path, root: Path) -> bool:
    resolved = path.resolve()
    return root in resolved.parents


def _read_capped(path: Path, relative: str, cap: int) -> CollectedFile | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            return None
        content = handle.read(cap)
    return CollectedFile(
        path=relative, size=info.st_size, content=content, truncated=info.st_size > cap
    )
