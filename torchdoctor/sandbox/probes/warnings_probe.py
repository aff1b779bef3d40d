"""Warnings raised while the script runs (deprecations, broadcast mismatches, CUDA syncs),
each attributed to the user's line that triggered it."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from types import FrameType
from typing import Any, TextIO

from torchdoctor.sandbox.probes.frames import UserFiles

MAX_KEPT = 50
SYNC_WARNING = "synchronizing"


class WarningsProbe:
    def __init__(self, user_files: UserFiles, on_sync: Callable[[], None]) -> None:
        self.user_files = user_files
        self.on_sync = on_sync
        self.kept: dict[tuple[str, str, str | None, int | None, bool], int] = {}
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
            self._raised_by_a_library(filename, lineno),
        )
        if key in self.kept or len(self.kept) < MAX_KEPT:
            self.kept[key] = self.kept.get(key, 0) + 1

    def _raised_by_a_library(self, filename: str, lineno: int) -> bool:
        """The warned-about call was made by library code, not by the user's. With stacklevel
        1 the warning names the deprecated function itself, so its caller made the call (the
        user's `F.sigmoid(x)`); with a higher one it names the frame that made the call
        (torch.onnx.export's own pytree code warning that `LeafSpec` is deprecated)."""
        frame: FrameType | None = sys._getframe(2)
        while frame is not None and frame.f_code.co_filename == warnings.__file__:
            frame = frame.f_back  # `warnings._showwarnmsg`
        warner = frame
        while frame is not None:
            if frame.f_code.co_filename == filename and frame.f_lineno == lineno:
                caller = frame.f_back if frame is warner else frame
                return caller is not None and not self.user_files.contains(
                    caller.f_code.co_filename
                )
            frame = frame.f_back
        return False  # the named frame is not on the stack: keep it as the user's

    def report(self) -> list[dict[str, Any]]:
        return [
            {"category": c, "message": m, "file": f, "line": ln, "count": n, "internal": i}
            for (c, m, f, ln, i), n in self.kept.items()
        ]
