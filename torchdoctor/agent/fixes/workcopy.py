"""Private copies of the audited tree: every fix is tried on one, never on the user's files.

Links that leave the tree, FIFOs, sockets and devices are not copied (the host reads the copy
to check fixes); the folder's name carries this process's id, so a copy left by a killed
audit is removed on the next start (`torchdoctor.sandbox.workspace.sweep_stale_copies`).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from torchdoctor.sandbox.workspace import CopyBudget

SKIPPED = (".git", ".venv", "venv", "__pycache__", ".torchdoctor", ".mypy_cache", ".pytest_cache")


@contextmanager
def workspace_copy(root: Path) -> Iterator[Path]:
    """A temporary copy of `root` (VCS, virtualenvs and caches left out), removed afterwards.
    A tree over `MAX_COPY_MB` raises `WorkspaceError` (nothing of it is left)."""
    with tempfile.TemporaryDirectory(prefix=f"td-ws-{os.getpid()}-fix-") as tmp:
        copy = Path(tmp) / "workspace"
        shutil.copytree(
            root,
            copy,
            ignore=_ignored(root),
            symlinks=True,
            copy_function=CopyBudget().copy_file,
        )
        yield copy


def _ignored(root: Path) -> Callable[[str, list[str]], set[str]]:
    real_root = os.path.realpath(root)
    skipped = shutil.ignore_patterns(*SKIPPED)

    def ignore(folder: str, names: list[str]) -> set[str]:
        ignored = set(skipped(folder, names))
        for name in names:
            path = os.path.join(folder, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                target = os.path.realpath(path)
                if target != real_root and not target.startswith(real_root + os.sep):
                    ignored.add(name)
            elif not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                ignored.add(name)
        return ignored

    return ignore
