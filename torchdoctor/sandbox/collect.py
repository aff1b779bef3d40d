"""Bring a job's output files back, without letting the job choose what the service reads.

Runs only after every process of the job is dead. The workspace is walked without following
any symlink and only regular files are opened (with O_NOFOLLOW): a job that replaced a file or
a folder by a symlink to `/etc`, or made a symlink loop, gets nothing back for it and cannot
send the service walking the host. Each content is capped at `Limits.collect_bytes`.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from pathlib import Path

from torchdoctor.sandbox.models import CollectedFile

MAX_FILES = 200


def collect_files(
    workspace: Path, patterns: list[str], cap: int, max_files: int = MAX_FILES
) -> list[CollectedFile]:
    """Regular files whose workspace-relative path matches a shell-style pattern (`*` also
    crosses folders), found without following any symlink, at most `max_files` of them."""
    if not patterns:
        return []
    root = workspace.resolve()
    found: list[CollectedFile] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder, name)
            relative = path.relative_to(root).as_posix()
            if any(fnmatch.fnmatchcase(relative, p) for p in patterns):
                collected = _read_capped(path, relative, cap)
                if collected is not None:
                    found.append(collected)
                if len(found) >= max_files:
                    return found
    return found


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
