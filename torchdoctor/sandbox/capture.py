"""Capped capture of a job's stdout and stderr.

Both streams draw on one byte budget (`Limits.output_bytes`): a job that prints without end is
stopped as soon as the budget is spent, instead of filling the service's memory. What was kept
is returned with a visible truncation marker, so nobody mistakes a cut log for a whole one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import IO

TRUNCATION_MARKER = "\n[torchdoctor-sandbox: output truncated, {dropped} more bytes discarded]\n"

CHUNK = 65536


class OutputBudget:
    """The shared allowance of both streams; thread-safe, one reader thread per stream."""

    def __init__(self, limit: int, on_overflow: Callable[[], None]) -> None:
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()
        self._on_overflow = on_overflow
        self.overflowed = False

    def take(self, wanted: int) -> int:
        """Grant up to `wanted` bytes; the first refusal triggers `on_overflow` once."""
        with self._lock:
            granted = max(0, min(wanted, self.limit - self._used))
            self._used += granted
            first_overflow = granted < wanted and not self.overflowed
            if granted < wanted:
                self.overflowed = True
        if first_overflow:
            self._on_overflow()
        return granted


class CappedStream:
    """Keeps the head of one stream within the budget and counts what it had to drop."""

    def __init__(self, budget: OutputBudget) -> None:
        self._budget = budget
        self._chunks: list[bytes] = []
        self.dropped = 0

    def feed(self, data: bytes) -> None:
        granted = self._budget.take(len(data))
        if granted:
            self._chunks.append(data[:granted])
        self.dropped += len(data) - granted

    def drain(self, pipe: IO[bytes]) -> None:
        """Read `pipe` to its end; keeps reading after overflow so the writer never blocks."""
        while chunk := os.read(pipe.fileno(), CHUNK):
            self.feed(chunk)

    @property
    def truncated(self) -> bool:
        return self.dropped > 0

    def text(self) -> str:
        body = b"".join(self._chunks).decode("utf-8", errors="replace")
        if self.dropped:
            body += TRUNCATION_MARKER.format(dropped=self.dropped)
        return body
