"""torchdoctor's own state on the host (checkpoints, caches, undo journals), kept private.

Everything here holds source excerpts or original file contents of audited code: folders are
created 0700 and files 0600, whatever the umask, and an existing folder is narrowed to 0700.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def torchdoctor_home() -> Path:
    return Path(os.environ.get("TORCHDOCTOR_HOME", Path.home() / ".cache" / "torchdoctor"))


def private_dir(path: Path) -> Path:
    """`path` (and missing parents) as a folder only its owner can enter."""
    path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    os.chmod(path, PRIVATE_DIR)
    return path


def private_file(path: Path) -> Path:
    """Create `path` empty (0600) if missing and narrow it to 0600 if present; SQLite's side
    files (-wal, -shm, -journal) are narrowed too when they exist."""
    private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    os.close(fd)
    for candidate in (path, *(path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal"))):
        if candidate.exists() and not candidate.is_symlink():
            os.chmod(candidate, PRIVATE_FILE)
    return path


def tree_key(root: Path) -> str:
    """A folder name for one audited tree: its base name (sanitised) and a hash of its real path."""
    real = os.path.realpath(root)
    digest = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(real))[:40] or "root"
    return f"{name}-{digest}"
