"""Read-only, path-safe access to the audited workspace's text files, cached per reasoner."""

from __future__ import annotations

import threading
from pathlib import Path


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
        path = (self.root / relpath).resolve()
        text: str | None = None
        if path.is_relative_to(self.root) and path.is_file():
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                text = None
        lines = None if text is None else text.splitlines()
        with self._lock:
            self._lines[relpath] = lines
        return lines
