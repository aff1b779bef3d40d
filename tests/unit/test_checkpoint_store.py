"""The SQLite checkpoint store waits for another connection's write lock rather than failing
with "database is locked" (API workers open one checkpoint file together; on a loaded 2-core
box a writer held the lock past sqlite3's 5 s default)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from torchdoctor.agent import durable


@contextmanager
def locked_for(path: Path, seconds: float) -> Iterator[None]:
    """Another connection holds an exclusive lock on `path` for `seconds`."""
    holder = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    holder.execute("begin exclusive")
    release = threading.Timer(seconds, lambda: holder.execute("commit"))
    release.start()
    try:
        yield
    finally:
        release.join()
        holder.close()


def test_the_store_waits_for_a_writer_longer_than_sqlites_default() -> None:
    assert durable.BUSY_TIMEOUT_S > 5.0


def test_the_store_opens_once_the_writer_lets_go(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.sqlite"
    with locked_for(path, 0.3), durable.open_store(path) as store:
        assert isinstance(store, durable.AuditStore)
        assert store.connection.execute("pragma journal_mode").fetchone()[0] == "wal"


def test_a_writer_held_past_the_busy_timeout_is_reported_as_locked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(durable, "BUSY_TIMEOUT_S", 0.05)
    path = tmp_path / "checkpoints.sqlite"
    with (
        locked_for(path, 0.5),
        pytest.raises(sqlite3.OperationalError, match="locked"),
        durable.open_store(path),
    ):
        pass
