"""Private copies of the audited tree: every fix is tried on one, never on the user's files."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SKIPPED = (".git", ".venv", "venv", "__pycache__", ".torchdoctor", ".mypy_cache", ".pytest_cache")


@contextmanager
def workspace_copy(root: Path) -> Iterator[Path]:
    """A temporary copy of `root` (VCS, virtualenvs and caches left out), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="torchdoctor-fix-") as tmp:
        copy = Path(tmp) / "workspace"
        shutil.copytree(root, copy, ignore=shutil.ignore_patterns(*SKIPPED), symlinks=True)
        yield copy
