"""Read-only, path-safe access to the audited workspace's text files, cached per reasoner.

Reads go through the guarded layer (no link out of the tree, no FIFO), and secrets are masked
before any line can reach the model.
"""

from __future__ import annotations

import threading
from pathlib import Path

from torchdoctor.agent.redact import mask_secrets
from torchdoctor.agent.safefs import GuardedTree

MAX_FILE_BYTES = 4_000_000


class WorkspaceFiles:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._lines: dict[str, list[str] | None] = {}
        self._lock = threading.Lock()

    def lines(self, relpath: str) -> list[str] | None:
        """The file's lines, or None when it is missing, unreadable or outside the workspace."""
        with self._lock:
            if relpath in self._lines:
                return self._lines[relpath]
        text: str | None
        try:
            raw = GuardedTree(self.root).read_bytes(relpath, MAX_FILE_BYTES)
            text = mask_secrets(raw.decode("utf-8", errors="replace"))
        except OSError:
            text = None
        lines = None if text is None else text.splitlines()
        with self._lock:
            self._lines[relpath] = lines
        return lines
