"""The server's event watch: one store read a tick however many streams wait, and a waiting
stream woken by its own audit's news only (a real SQLite store)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from torchdoctor.agent.audit import AuditChoices
from torchdoctor.api.app import create_app
from torchdoctor.api.event_watch import EventWatch
from torchdoctor.api.models import AuditEvent, AuditState
from torchdoctor.api.routes.audits import LOOK_AGAIN_S
from torchdoctor.api.settings import ApiSettings
from torchdoctor.api.store.engine import migrate, open_engine
from torchdoctor.api.store.store import Store


class CountedStore(Store):
    def __init__(self, path: Path) -> None:
        engine = open_engine(f"sqlite:///{path}")
        migrate(engine)
        super().__init__(engine)
        self.reads = 0

    def newest_event_ids(self, audit_ids: list[str]) -> dict[str, int]:
        self.reads += 1
        return super().newest_event_ids(audit_ids)


def test_one_read_a_tick_wakes_only_the_streams_with_news(tmp_path: Path) -> None:
    store = CountedStore(tmp_path / "api.sqlite")
    ids = [f"a{n}" for n in range(10)]
    for audit_id in ids:
        store.create_audit(audit_id, "acme", AuditChoices(), "/nowhere")  # writes one event
    seen = store.newest_event_ids(ids)
    assert set(seen) == set(ids)
    store.reads = 0

    async def scenario() -> tuple[list[str], float]:
        watch = EventWatch(store, poll_s=0.05)
        ticking = asyncio.create_task(watch.run_forever())
        woken: list[str] = []

        async def follow(audit_id: str) -> None:
            await watch.news(audit_id, seen[audit_id], timeout_s=30)
            woken.append(audit_id)

        followers = [asyncio.create_task(follow(audit_id)) for audit_id in ids]
        await asyncio.sleep(0.3)
        assert woken == []
        started = time.monotonic()
        await asyncio.to_thread(store.add_event, "a3", "phase", {"phase": 1})
        await asyncio.wait_for(followers[3], 5)
        latency = time.monotonic() - started
        await asyncio.sleep(0.2)
        for follower in followers:
            follower.cancel()
        ticking.cancel()
        return woken, latency

    started = time.monotonic()
    woken, latency = asyncio.run(scenario())
    ticks = (time.monotonic() - started) / 0.05
    assert woken == ["a3"]
    assert latency < 2.0
    assert 0 < store.reads <= ticks + 1  # not one a stream


def test_a_wait_ends_at_its_timeout_without_news(tmp_path: Path) -> None:
    store = CountedStore(tmp_path / "api.sqlite")
    store.create_audit("a1", "acme", AuditChoices(), "/nowhere")
    newest = store.newest_event_ids(["a1"])["a1"]

    async def scenario() -> float:
        watch = EventWatch(store, poll_s=0.05)
        ticking = asyncio.create_task(watch.run_forever())
        started = time.monotonic()
        await watch.news("a1", newest, timeout_s=0.3)
        ticking.cancel()
        assert watch._waiting == {}  # nothing left behind
        return time.monotonic() - started

    assert 0.3 <= asyncio.run(scenario()) < 3.0


def test_a_wake_looks_at_once_without_waiting_for_the_tick(tmp_path: Path) -> None:
    """The server wakes its watch when it knows an audit ended (a worker exited, a repeat was
    finished from a kept result): the stream sees the end at once, not up to a tick later."""
    store = CountedStore(tmp_path / "api.sqlite")
    store.create_audit("a1", "acme", AuditChoices(), "/nowhere")
    newest = store.newest_event_ids(["a1"])["a1"]

    async def scenario() -> float:
        watch = EventWatch(store, poll_s=60.0)
        ticking = asyncio.create_task(watch.run_forever())
        waiting = asyncio.create_task(watch.news("a1", newest, timeout_s=30))
        await asyncio.sleep(0.1)
        await asyncio.to_thread(store.add_event, "a1", "state", {"state": "done"})
        started = time.monotonic()
        await asyncio.to_thread(watch.wake)  # from another thread, as the executor calls it
        await asyncio.wait_for(waiting, 10)
        ticking.cancel()
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 5.0  # a tick is 60 s: only the wake can have done it


class NoWorkers:
    """An executor that never runs anything (the audits here are finished by the test)."""

    def free_slots(self) -> int:
        return 0

    def start(self, audit_id: str, owner: str) -> None:
        raise AssertionError("nothing is started here")

    def running(self) -> list[str]:
        return []

    def kill(self, audit_id: str) -> None:
        pass

    def close(self) -> None:
        pass

    def watch_ends(self, callback: Callable[[], None]) -> None:
        pass


def test_a_stream_ends_at_the_final_state_event_even_when_its_state_read_was_older(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream reads the audit's state, then its events: an audit that ends in between is
    seen running with its `done` event already among the events. The stream ends there, not
    after `LOOK_AGAIN_S` of waiting for news that never comes."""
    settings = ApiSettings(home=tmp_path / "home")
    app = create_app(settings, executor=NoWorkers(), poll_s=0.05)
    store: Store = app.state.store
    migrate(store.engine)
    _key_id, key = store.create_key("acme")
    store.create_audit("a1", "acme", AuditChoices(), "/nowhere")
    assert store.claim("server-1", lease_s=60) == "a1"
    store.finish("a1", "server-1", AuditState.DONE, report="{}")
    real = store.state_and_events_after
    looks: list[AuditState | None] = []

    def state_read_before_the_end(
        audit_id: str, tenant: str, after: int, limit: int = 500
    ) -> tuple[AuditState | None, list[AuditEvent]]:
        state, events = real(audit_id, tenant, after, limit)
        if not looks:  # the first look: its state was read before the audit ended
            state = AuditState.RUNNING
        looks.append(state)
        return state, events

    monkeypatch.setattr(store, "state_and_events_after", state_read_before_the_end)
    with TestClient(app) as client:
        started = time.monotonic()
        response = client.get("/v1/audits/a1/events", headers={"Authorization": f"Bearer {key}"})
        elapsed = time.monotonic() - started
    assert response.status_code == 200
    kinds = [
        line.split(":", 1)[1].strip()
        for line in response.text.splitlines()
        if line.startswith("event:")
    ]
    assert kinds[-1] == "state" and '"done"' in response.text
    assert looks[0] is AuditState.RUNNING
    assert elapsed < LOOK_AGAIN_S / 2
