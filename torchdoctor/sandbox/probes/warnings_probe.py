"""Warnings raised while the script runs (deprecations, broadcast mismatches, CUDA syncs),
each attributed to the user's line that triggered it."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, TextIO

from torchdoctor.sandbox.probes.frames import UserFiles

MAX_KEPT = 50
SYNC_WARNING = "synchronizing"


class WarningsProbe:
    def __init__(self, user_files: UserFiles, on_sync: Callable[[], None]) -> None:
        self.user_files = user_files
        self.on_sync = on_sync
        self.kept: dict[tuple[str, str, str | None, int | None], int] = {}
        self._previous: Callable[..., Any] | None = None
        self._filters: list[Any] = []

    def install(self) -> None:
        self._previous = warnings.showwarning
        self._filters = list(warnings.filters)
        warnings.showwarning = self._show
        warnings.filterwarnings("always", message=".*synchroniz.*")

    def uninstall(self) -> None:
        if self._previous is not None:
            warnings.showwarning = self._previous
            warnings.filters[:] = self._filters  # type: ignore[index]
            getattr(warnings, "_filters_mutated", lambda: None)()  # drop cached decisions

    def _show(
        self,
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        text = str(message)
        if SYNC_WARNING in text and "CUDA" in text:
            self.on_sync()
            return
        location = self.user_files.caller(skip=1)
        key = (
            category.__name__,
            text[:300],
            location.file if location else None,
            location.line if location else None,
        )
        if key in self.kept or len(self.kept) < MAX_KEPT:
            self.kept[key] = self.kept.get(key, 0) + 1

    def report(self) -> list[dict[str, Any]]:
        return [
            {"category": c, "message": m, "file": f, "line": ln, "count": n}
            for (c, m, f, ln), n in self.kept.items()
        ]
