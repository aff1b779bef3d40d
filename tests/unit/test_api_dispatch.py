"""Less waiting under load: a worker's progress events reach the store in a few transactions,
in order and all before the audit's final state; the dispatcher fills a slot as soon as an
audit is queued or a worker ends, not at its next tick (SQLite here; PostgreSQL in tests/api)."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import psutil
import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from torchdoctor.agent.audit import AuditChoices
from torchdoctor.agent.models import (
    AuditReport,
    CoverageEntry,
    Provenance,
    Summary,
    Target,
    ToolInfo,
)
from torchdoctor.api import dispatcher as dispatcher_module
from torchdoctor.api.dispatcher import Dispatcher
from torchdoctor.api.event_batch import EventBatch
from torchdoctor.api.executor import LocalExecutor
from torchdoctor.api.models import AuditRecord, AuditState
from torchdoctor.api.reuse import keep, reuse_key
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


def _records_then_exits_slowly(recorded: Connection) -> None:
    recorded.close()  # what `worker.run` does once the outcome is in the store
    time.sleep(1.0)  # the process's teardown, slow here


def _bare_executor(on_end: Callable[[], None]) -> LocalExecutor:
    """A LocalExecutor's bookkeeping without its fork server."""
    executor = LocalExecutor.__new__(LocalExecutor)
    executor.max_workers, executor._children, executor._exiting = 1, {}, []
    executor._lock, executor._on_end = threading.Lock(), on_end
    return executor


def _started(executor: LocalExecutor, target: Callable[..., None], *args: object) -> None:
    context = multiprocessing.get_context("fork")
    recorded, record = context.Pipe(duplex=False)
    process = context.Process(target=target, args=(*args, record))
    process.start()
    record.close()
    executor._children["a1"] = process
    threading.Thread(target=executor._tell_end, args=("a1", process, recorded)).start()


def test_a_worker_frees_its_slot_once_it_has_recorded_the_outcome_not_once_it_has_exited() -> None:
    ended = threading.Event()
    executor = _bare_executor(ended.set)
    _started(executor, _records_then_exits_slowly)
    assert ended.wait(0.8)  # told before the worker's exit
    assert executor.running() == [] and executor.free_slots() == 1
    (process,) = executor._exiting
    assert process.is_alive()  # still exiting: reaped later, or killed at shutdown
    process.join()
    assert executor.running() == [] and executor._exiting == []
    assert process.exitcode == 0


def test_a_worker_that_dies_without_a_word_is_told_by_its_end() -> None:
    ended = threading.Event()
    executor = _bare_executor(ended.set)
    _started(executor, lambda _recorded: time.sleep(0.1))  # never closes its pipe itself
    assert ended.wait(5)
    executor._exiting[0].join()
    assert executor.running() == [] and executor._exiting == []


def test_a_worker_still_exiting_is_killed_at_shutdown() -> None:
    executor = _bare_executor(lambda: None)
    _started(executor, _records_then_exits_slowly)
    deadline = time.monotonic() + 5
    while not executor._exiting and time.monotonic() < deadline:
        time.sleep(0.01)
    (process,) = executor._exiting
    started = time.monotonic()
    executor.close()
    assert process.pid is not None and not psutil.pid_exists(process.pid)  # killed, reaped
    assert time.monotonic() - started < 0.9  # not left to end its sleep


def _report(audit_id: str) -> AuditReport:
    return AuditReport(
        tool=ToolInfo(version="0"),
        target=Target(path=".", kind="folder"),
        findings=[],
        coverage=[CoverageEntry(item="1.1", verdict="pass", how="static")],
        summary=Summary(
            total=0, by_severity={}, by_point={}, by_status={}, coverage={}, files_audited=1
        ),
        provenance=Provenance(
            python_version="3.11",
            reasoner="offline",
            audit_id=audit_id,
            started_at="t",
            duration_s=0,
        ),
    )


def test_repeats_need_no_slot_they_are_claimed_while_every_slot_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two slots, both taken by the first two audits: the repeats queued behind the third
    audit do not wait for a slot. A repeat of a running audit is parked at once; when that
    audit ends with a kept result its repeats are finished, and a repeat of an already kept
    audit is finished as soon as it is queued, all while the third audit still waits for a
    slot (SQLite store, the result cache on disk)."""
    monkeypatch.setenv("TORCHDOCTOR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCHDOCTOR_RESULT_CACHE", "1")
    store, slots = _store(tmp_path), Slots()
    dispatcher = Dispatcher(store, slots, lease_s=60, interval_s=30)
    finish_from_kept = dispatcher._finish_from_kept
    finished_records: list[AuditRecord] = []

    def spy(record: AuditRecord, key: str) -> bool:
        finished_records.append(record)
        return finish_from_kept(record, key)

    monkeypatch.setattr(dispatcher, "_finish_from_kept", spy)
    offline = AuditChoices(offline=True)
    code = {"a": "import torch\nx = torch.ones(1)\n", "b": "import torch\ny = torch.zeros(2)\n"}

    def submit(audit_id: str, text: str) -> None:
        src = tmp_path / "audits" / audit_id / "src"
        src.mkdir(parents=True)
        (src / "train.py").write_text(text)
        store.create_audit(audit_id, "acme", offline, str(src.parent))
        time.sleep(0.01)  # claimed in submission order

    def state(audit_id: str) -> AuditState:
        record = store.get_audit(audit_id, None)
        assert record is not None
        return record.state

    async def scenario() -> None:
        for audit_id, text in [
            ("a1", code["a"]),
            ("b1", code["b"]),
            ("c1", "import torch\nz = torch.eye(3)\n"),
            ("a2", code["a"]),
            ("b2", code["b"]),
        ]:
            submit(audit_id, text)
        await dispatcher.tick()
        assert slots.started == ["a1", "b1"]
        assert state("c1") is AuditState.QUEUED  # it needs a slot: it waits for one
        assert {a: state(a) for a in ("a2", "b2")} == {
            "a2": AuditState.RUNNING,  # claimed, parked behind the audit it repeats
            "b2": AuditState.RUNNING,
        }
        record = store.get_audit("a1", None)
        assert record is not None
        key = reuse_key(record)
        assert key is not None
        keep(key, _report("a1"), Path(record.workdir) / "src", [])
        store.finish("a1", dispatcher.owner, AuditState.DONE, report="{}")
        slots.started.remove("a1")
        submit("a3", code["a"])  # a repeat of a kept audit, queued behind c1
        submit("d1", "import torch\nw = torch.rand(4)\n")  # takes the freed slot first
        assert store.claim_audit("d1", dispatcher.owner, lease_s=60)
        slots.started.append("d1")
        await dispatcher.tick()
        assert state("a2") is AuditState.DONE
        assert state("a3") is AuditState.DONE
        assert state("b2") is AuditState.RUNNING  # b1 still runs
        assert state("c1") is AuditState.QUEUED
        assert slots.started == ["b1", "d1"]
        report = store.get_audit("a3", None)
        assert report is not None and report.finished_at is not None
        # each repeat is finished from the record read after its claim: its report starts then
        finished = {r.id: r.started_at for r in finished_records if r.id in ("a2", "a3")}
        assert set(finished) == {"a2", "a3"} and None not in finished.values(), finished

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_a_tick_hashes_few_queued_trees_when_hashing_takes_long(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Queued trees are hashed (to find repeats) within a per-tick budget, at least one a
    tick: a long queue of large uploads does not hold up the tick that fills a freed slot."""
    monkeypatch.setenv("TORCHDOCTOR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCHDOCTOR_RESULT_CACHE", "1")
    monkeypatch.setattr(dispatcher_module, "HASHING_PER_TICK_S", 0.0)
    store, slots = _store(tmp_path), Slots()
    dispatcher = Dispatcher(store, slots, lease_s=60, interval_s=30)
    for n, audit_id in enumerate(["a1", "b1", "a2", "a3", "a4"]):
        src = tmp_path / "audits" / audit_id / "src"
        src.mkdir(parents=True)
        text = "import torch\nx = torch.ones(1)\n" if audit_id[0] == "a" else f"y = {n}\n"
        (src / "train.py").write_text(text)
        store.create_audit(audit_id, "acme", AuditChoices(offline=True), str(src.parent))
        time.sleep(0.01)

    def parked() -> list[str]:
        records = [store.get_audit(a, None) for a in ("a2", "a3", "a4")]
        return [r.id for r in records if r is not None and r.state is AuditState.RUNNING]

    async def scenario() -> list[list[str]]:
        seen = []
        for _ in range(3):
            await dispatcher.tick()
            seen.append(parked())
        return seen

    assert asyncio.run(scenario()) == [["a2"], ["a2", "a3"], ["a2", "a3", "a4"]]
    assert slots.started == ["a1", "b1"]
