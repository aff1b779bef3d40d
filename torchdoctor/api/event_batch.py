"""A worker's progress events, written to the store in batches: one transaction for all the
events of the last moment rather than one each (a static audit emits some thirty), so
concurrent workers queue far less on the database's single writer. A follower sees them at
most `flush_s` later; the audit's final state is recorded only after the last batch.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from torchdoctor.api.store.store import Store


class EventBatch:
    """Collects `(kind, data)` events, with the time each happened, and writes them every
    `flush_s` from a thread of its own; leaving the context writes what is left."""

    def __init__(self, store: Store, audit_id: str, flush_s: float = 0.2) -> None:
        self.store, self.audit_id, self.flush_s = store, audit_id, flush_s
        self._pending: list[tuple[str, dict[str, Any], float]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._writer = threading.Thread(target=self._write_until_closed, daemon=True)

    def __enter__(self) -> EventBatch:
        self._writer.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._closed.set()
        self._writer.join()
        self.flush()

    def add(self, kind: str, data: dict[str, Any]) -> None:
        with self._lock:
            self._pending.append((kind, data, time.time()))  # when it happened

    def flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        if batch:
            self.store.add_events(self.audit_id, batch)

    def _write_until_closed(self) -> None:
        while not self._closed.wait(self.flush_s):
            self.flush()
