"""Private copies of the audited tree: every fix is tried on one, never on the user's files.

The sandbox's copy (`stage_workspace`) with two differences: virtualenvs and the audit's own
folder are left out too, and a link that leaves the tree, a FIFO, a socket or a device is left
out rather than refusing the copy (the host reads the copy to check fixes; a run of it is
staged again, strictly, by the sandbox). Links inside the tree are relinked relative to the
copy, so that a patch written through one never reaches the original. The folder's name
carries this process's id, so a copy left by a killed audit is removed on the next start
(`torchdoctor.sandbox.workspace.sweep_stale_copies`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torchdoctor.sandbox.workspace import SKIPPED_NAMES, remove_workspace, stage_workspace

SKIPPED = SKIPPED_NAMES | {".venv", "venv", ".torchdoctor"}


@contextmanager
def workspace_copy(root: Path) -> Iterator[Path]:
    """A temporary copy of `root` (VCS, virtualenvs and caches left out), removed afterwards.
    A tree over `MAX_COPY_MB` raises `WorkspaceError` (nothing of it is left)."""
    copy = stage_workspace(root, prefix="td-ws-", skipped=SKIPPED, strict=False)
    try:
        yield copy
    finally:
        remove_workspace(copy)
