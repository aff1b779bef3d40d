"""Less waiting under load: a worker's progress events reach the store in a few transactions,
in order and all before the audit's final state; the dispatcher fills a slot as soon as an
audit is queued or a worker ends, not at its next tick (SQLite here; PostgreSQL in tests/api)."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.orm import Session

from torchdoctor.agent.audit import AuditChoices
from torchdoctor.api.dispatcher import Dispatcher
from torchdoctor.api.event_batch import EventBatch
from torchdoctor.api.executor import LocalExecutor
from torchdoctor.api.models import AuditState
from torchdoctor.api.store.engine import migrate, open_engine
from torchdoctor.api.store.store import Store


def _store(tmp_path: Path) -> Store:
    engine = open_engine(f"sqlite:///{tmp_path / 'home' / 'api.sqlite'}")
    migrate(engine)
    return Store(engine)


def test_events_are_written_in_order_in_few_transactions(tmp_path: Path) -> None:
    store = _store(tmp_path)
    store.create_audit("a1", "acme", AuditChoices(), "/nowhere")
    assert store.claim("server-1", lease_s=60) == "a1"
    writes: list[int] = []

    def count(_session: Session, _context: object) -> None:
        writes.append(1)

    event.listen(Session, "after_flush", count)
    with EventBatch(store, "a1", flush_s=0.05) as batch:
        for n in range(30):
            batch.add("point", {"n": n})
            if n == 14:
                time.sleep(0.2)  # a follower sees the first half meanwhile
                assert [e.data["n"] for e in store.events_after("a1", 0)[2:]] == list(range(15))
    store.finish("a1", "server-1", AuditState.DONE, report="{}")
    written = store.events_after("a1", 0)
    assert [e.data.get("n") for e in written if e.kind == "point"] == list(range(30))
    assert written[-1].kind == "state" and written[-1].data["state"] == "done"
    event.remove(Session, "after_flush", count)
    assert len(writes) <= 4  # a few batches and the final state, not thirty-one transactions


class Slots:
    """An executor that only records what it was asked to start."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.on_end: Callable[[], None] | None = None

    def free_slots(self) -> int:
        return 2 - len(self.started)

    def start(self, audit_id: str, owner: str) -> None:
        self.started.append(audit_id)

    def running(self) -> list[str]:
        return list(self.started)

    def kill(self, audit_id: str) -> None:
        self.started.remove(audit_id)

    def close(self) -> None:
        self.started.clear()

    def watch_ends(self, callback: Callable[[], None]) -> None:
        self.on_end = callback


def test_a_queued_audit_or_an_ended_worker_wakes_the_dispatcher(tmp_path: Path) -> None:
    """... and an ended worker is news for the event streams too (`on_news`: the server's
    event watch looks at the store at once)."""
    store, slots = _store(tmp_path), Slots()
    news: list[str] = []
    dispatcher = Dispatcher(  # no tick in this test
        store, slots, lease_s=60, interval_s=30, on_news=lambda: news.append("ended")
    )

    async def scenario() -> None:
        loop = asyncio.create_task(dispatcher.run_forever())
        await asyncio.sleep(0.2)  # its first tick: nothing queued yet
        for audit_id in ("a1", "a2", "a3"):
            store.create_audit(audit_id, "acme", AuditChoices(), "/nowhere")
            time.sleep(0.01)  # claimed in submission order
        dispatcher.wake()  # what the submit route does
        await _until(lambda: slots.started == ["a1", "a2"])
        store.finish("a1", dispatcher.owner, AuditState.DONE, report="{}")
        slots.started.remove("a1")
        assert slots.on_end is not None
        assert news == []
        threading.Thread(target=slots.on_end).start()  # a worker's end, told from a thread
        await _until(lambda: slots.started == ["a2", "a3"])
        assert news == ["ended"]
        loop.cancel()

    asyncio.run(asyncio.wait_for(scenario(), 10))


async def _until(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.02)


def test_the_local_executor_tells_a_workers_end() -> None:
    ended = threading.Event()
    process = multiprocessing.get_context("fork").Process(target=time.sleep, args=(0.1,))
    process.start()
    LocalExecutor._tell_end(process, ended.set)  # returns once the worker has ended
    assert ended.is_set()
    process.join()
    assert process.exitcode == 0
