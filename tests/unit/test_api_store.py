"""The store's queue: one claim per audit, a lapsed lease taken over only by another server,
cancellation ending the lease, tenants kept apart (SQLite here; PostgreSQL in tests/api)."""

from __future__ import annotations

import time
from pathlib import Path

from torchdoctor.agent.audit import AuditChoices
from torchdoctor.api.models import AuditState
from torchdoctor.api.store.engine import migrate, open_engine
from torchdoctor.api.store.store import Store


def _store(tmp_path: Path) -> Store:
    engine = open_engine(f"sqlite:///{tmp_path / 'home' / 'api.sqlite'}")
    migrate(engine)
    migrate(engine)  # idempotent
    return Store(engine)


def test_the_database_file_is_private(tmp_path: Path) -> None:
    _store(tmp_path)
    assert (tmp_path / "home").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "home" / "api.sqlite").stat().st_mode & 0o777 == 0o600


def test_commits_do_not_wait_on_fsync_in_wal_mode(tmp_path: Path) -> None:
    with _store(tmp_path).engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_an_audit_is_claimed_once_and_a_lapsed_lease_only_by_another(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.create_audit("a1", "acme", AuditChoices(), "/nowhere")
    assert store.claim("server-1", lease_s=0.05) == "a1"
    assert store.claim("server-1", lease_s=0.05) is None
    time.sleep(0.1)
    assert store.claim("server-1", lease_s=0.05) is None  # its own: still starting, not dead
    assert store.claim("server-2", lease_s=60) == "a1"
    assert store.renew_leases(["a1"], "server-1", 60) == set()
    assert store.renew_leases(["a1"], "server-2", 60) == {"a1"}
    record = store.get_audit("a1", "acme")
    assert record is not None and record.attempts == 2 and record.state is AuditState.RUNNING


def test_cancel_ends_the_lease_and_tenants_do_not_see_each_other(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.create_audit("a1", "acme", AuditChoices(), "/nowhere")
    assert store.claim("server-1", lease_s=60) == "a1"
    assert store.get_audit("a1", "other") is None
    assert store.cancel("a1", "other") is None
    assert store.cancel("a1", "acme") is AuditState.CANCELLED
    assert store.renew_leases(["a1"], "server-1", 60) == set()
    assert not store.finish("a1", "server-1", AuditState.DONE, report="{}")
    assert store.count_active("acme") == 0


def test_keys_are_kept_as_hashes_and_revocable(tmp_path: Path) -> None:
    store = _store(tmp_path)
    key_id, key = store.create_key("acme")
    on_disk = b"".join(p.read_bytes() for p in (tmp_path / "home").glob("api.sqlite*"))
    assert key.split("_", 2)[2].encode() not in on_disk
    who = store.authenticate(key)
    assert who is not None and (who.key_id, who.tenant) == (key_id, "acme")
    assert store.authenticate(key[:-1] + ("x" if key[-1] != "x" else "y")) is None
    assert store.revoke_key(key_id) and not store.revoke_key(key_id)
    assert store.authenticate(key) is None


def test_a_stream_reads_the_state_and_the_newer_events_of_its_tenants_audit_only(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    store.create_audit("a1", "acme", AuditChoices(), "/nowhere")  # with its queued event
    store.add_events("a1", [("phase", {"phase": 1}, time.time()), ("point", {"p": 2}, 0.0)])
    state, events = store.state_and_events_after("a1", "acme", 0)
    assert state is AuditState.QUEUED and [e.kind for e in events] == ["state", "phase", "point"]
    assert events == store.events_after("a1", 0)
    state, newer = store.state_and_events_after("a1", "acme", events[1].id)
    assert state is AuditState.QUEUED and newer == events[2:]
    assert store.state_and_events_after("a1", "other", 0) == (None, [])
    assert store.state_and_events_after("missing", "acme", 0) == (None, [])
