"""The loop that feeds the executor from the store's queue, keeps leases, enforces cancels.

Every server process runs one. Each tick it renews the leases of the audits it runs and kills
those it no longer holds (cancelled by a DELETE that any server process took); then it claims
queued audits, and running ones whose lease ran out (their server died), up to its free
slots. A lease lives as long as its server: a crashed server's audits are resumed elsewhere.
Store calls go to a thread. A tick also comes at once when a worker ends or an audit is
submitted to this server (`wake`): under load a freed slot is not left idle until the next
tick, which with sub-second audits would cost a sizeable share of the pool. An audit that
repeats one already made (same bytes, same choices, `reuse`) is finished from its result
without a worker, or parked without a slot until the one it repeats is done; such a repeat is
claimed even while every slot is taken (it needs none), rather than waiting in the queue
behind audits that do: under a batch of repeats, a finished audit's repeats end with it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress

from anyio import to_thread
from starlette.requests import Request

from torchdoctor.agent import result_cache
from torchdoctor.api.executor import Executor
from torchdoctor.api.models import AuditRecord
from torchdoctor.api.reuse import KeptAudit, finish_reused, kept, reuse_key
from torchdoctor.api.store.store import Store

log = logging.getLogger("torchdoctor.api")
MAX_WAITING = 64
"""Repeats one server parks at most (beyond, the rest stay queued for any server)."""
HASHING_PER_TICK_S = 0.05
"""How long one tick may spend hashing queued trees it has not seen (large uploads take
longer), so that a worker's end is not left waiting behind it."""
MAX_REMEMBERED = 64
"""Kept results a server holds in memory for their next repeats (each also stays on disk)."""


class Dispatcher:
    def __init__(
        self,
        store: Store,
        executor: Executor,
        lease_s: float,
        interval_s: float = 0.25,
        on_news: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.on_news = on_news
        """Called (from any thread) once an audit's end is in the store: its worker ended, or
        a repeat was finished from a kept result."""
        self.executor = executor
        self.lease_s = lease_s
        self.interval_s = interval_s
        self.owner = uuid.uuid4().hex
        self._loop: asyncio.AbstractEventLoop | None = None
        self._woken = asyncio.Event()
        self._leaders: dict[str, str] = {}
        """Audits it started that repeats may wait on -> their reuse key."""
        self._waiting: dict[str, str] = {}
        """Claimed repeats of a running leader -> its key (they hold no worker slot)."""
        self._not_kept: set[str] = set()
        self._queued: dict[str, str | None] = {}
        """Queued audits looked at for repeats -> their record and reuse key (each tree is
        hashed once, however many ticks it stays queued)."""
        self._remembered: dict[str, KeptAudit] = {}
        self._remembering = threading.Lock()
        """Kept results by key, read once for all their repeats (a key's result never
        changes: it derives from the bytes the key names)."""
        executor.watch_ends(self._worker_ended)

    def _worker_ended(self) -> None:
        self.on_news()
        self.wake()

    def wake(self) -> None:
        """Tick now rather than at the next interval; callable from any thread."""
        if self._loop is not None and not self._loop.is_closed():
            with suppress(RuntimeError):  # the loop closed meanwhile (shutdown)
                self._loop.call_soon_threadsafe(self._woken.set)

    async def run_forever(self) -> None:
        self._loop = asyncio.get_running_loop()
        while True:
            self._woken.clear()
            try:
                await self.tick()
            except Exception:
                log.exception("dispatcher tick failed")
            with suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), self.interval_s)

    async def tick(self) -> None:
        running = self.executor.running()
        for audit_id in [a for a in self._leaders if a not in running]:
            await to_thread.run_sync(self._ended, self._leaders.pop(audit_id))
        watched = [*running, *self._waiting]
        held = await to_thread.run_sync(self.store.renew_leases, watched, self.owner, self.lease_s)
        for audit_id in running:
            if audit_id not in held:
                await to_thread.run_sync(self.executor.kill, audit_id)
                log.info("released (finished or cancelled)", extra={"audit_id": audit_id})
        for audit_id in [a for a in self._waiting if a not in held]:
            del self._waiting[audit_id]  # cancelled while it waited
        # Free slots first: the next audit to start is what the queue waits on, while a
        # repeat whose leader kept its result is finished just after, without a slot.
        for audit_id, key in list(self._waiting.items()):
            if key in self._not_kept and key not in self._leaders.values():
                if self.executor.free_slots() <= 0:
                    break
                del self._waiting[audit_id]  # claimed before the queue's: it goes first
                await self._start(audit_id, key)
        while self.executor.free_slots() > 0 and len(self._waiting) < MAX_WAITING:
            claimed = await to_thread.run_sync(self.store.claim, self.owner, self.lease_s)
            if claimed is None:
                break
            await self._take(claimed)
        leaders = set(self._leaders.values())
        ready = [
            (audit_id, key)
            for audit_id, key in self._waiting.items()
            if key not in leaders and key not in self._not_kept
        ]
        # Together: each finish mostly waits on its ledger's fsync and its commit.
        finished = await asyncio.gather(
            *(to_thread.run_sync(self._finish_parked, audit_id, key) for audit_id, key in ready)
        )
        for (audit_id, key), done in zip(ready, finished, strict=True):
            if done:
                del self._waiting[audit_id]
            else:
                self._not_kept.add(key)  # its result is gone: it runs when a slot frees
        await self._take_repeats()

    async def _take(self, audit_id: str) -> None:
        """Finish a claimed audit from an identical one's kept result, or park it until the
        identical one it repeats has finished (it holds no worker slot meanwhile), or start
        it."""
        record, key = await to_thread.run_sync(self._record_and_key, audit_id)
        if record is None or not await self._reused(record, key):
            await self._start(audit_id, key)

    async def _reused(self, record: AuditRecord, key: str | None) -> bool:
        """Whether a claimed audit needs no worker: finished from a kept result, or parked
        behind the running audit it repeats."""
        if key is None or key in self._not_kept:
            return False
        if await to_thread.run_sync(self._finish_from_kept, record, key):
            return True
        if key in self._leaders.values():
            self._waiting[record.id] = key
            return True
        return False

    async def _start(self, audit_id: str, key: str | None) -> None:
        await to_thread.run_sync(self.executor.start, audit_id, self.owner)
        if key is not None:
            self._leaders[audit_id] = key
        log.info("started", extra={"audit_id": audit_id})

    async def _take_repeats(self) -> None:
        """Claim the queued audits that repeat one kept or running here, whatever the free
        slots: they need none, so they are finished (or parked) now instead of waiting in the
        queue behind audits that need one. The others stay queued for any server."""
        room = MAX_WAITING - len(self._waiting)
        if room <= 0 or not result_cache.enabled():
            return
        leaders = frozenset(self._leaders.values())
        repeats = await to_thread.run_sync(self._queued_repeats, leaders, room)
        for audit_id, key in repeats:
            claimed = await to_thread.run_sync(
                self.store.claim_audit, audit_id, self.owner, self.lease_s
            )
            self._queued.pop(audit_id, None)
            if not claimed:
                continue  # taken by another server, or cancelled
            # read again once claimed: the report of a repeat starts at its claim
            record = await to_thread.run_sync(self.store.get_audit, audit_id, None)
            if record is None:
                continue
            if not await self._reused(record, key):
                self._waiting[audit_id] = key  # its result is gone: run when a slot frees
                self._not_kept.add(key)

    def _queued_repeats(self, leaders: frozenset[str], limit: int) -> list[tuple[str, str]]:
        """The oldest queued audits (up to `limit`) whose key a running leader or a kept
        result has (in a worker thread: it reads the store, and hashes a tree the first time
        it sees it)."""
        queued = self.store.queued_ids(MAX_WAITING)
        self._queued = {a: self._queued[a] for a in queued if a in self._queued}
        found: list[tuple[str, str]] = []
        hashing_until, hashed = time.monotonic() + HASHING_PER_TICK_S, 0
        for audit_id in queued:
            if audit_id not in self._queued:
                if hashed and time.monotonic() > hashing_until:
                    continue  # looked at in a later tick: this one has other work to do
                hashed += 1
                record = self.store.get_audit(audit_id, None)
                if record is None:
                    continue
                self._queued[audit_id] = reuse_key(record)
            key = self._queued[audit_id]
            if key is None or key in self._not_kept:
                continue
            if key in leaders or self._kept(key) is not None:
                found.append((audit_id, key))
                if len(found) >= limit:
                    break
        return found

    def _record_and_key(self, audit_id: str) -> tuple[AuditRecord | None, str | None]:
        """The claimed audit as the store has it now (its claim time included) and its reuse
        key, hashed once: a key computed while it was queued is kept."""
        record = self.store.get_audit(audit_id, None)
        if record is None:
            return None, None
        return record, self._queued.pop(audit_id) if audit_id in self._queued else reuse_key(record)

    def _kept(self, key: str) -> KeptAudit | None:
        """The kept result of `key`, from memory once it was read (from any thread)."""
        with self._remembering:
            found = self._remembered.get(key)
        if found is None:
            found = kept(key)
            if found is not None:
                with self._remembering:
                    if len(self._remembered) >= MAX_REMEMBERED:
                        self._remembered.pop(next(iter(self._remembered)))
                    self._remembered[key] = found
        return found

    def _finish_parked(self, audit_id: str, key: str) -> bool:
        """Finish a parked repeat from its leader's kept result (in a worker thread); False
        when that result is gone."""
        record = self.store.get_audit(audit_id, None)
        # None: nothing left to finish
        return record is None or self._finish_from_kept(record, key)

    def _finish_from_kept(self, record: AuditRecord, key: str) -> bool:
        """Finish `record` from the kept result of `key` (in a worker thread); False when there
        is none."""
        reused = self._kept(key)
        if reused is None:
            return False
        finish_reused(self.store, record, self.owner, reused)
        self.on_news()
        log.info("finished from an identical audit", extra={"audit_id": record.id})
        return True

    def _ended(self, key: str) -> None:
        """A leader ended: if it kept nothing (its run or reasoner may differ next time), its
        repeats run as they come rather than one after the other."""
        if self._kept(key) is None:
            if len(self._not_kept) >= MAX_WAITING * 16:
                self._not_kept.clear()
            self._not_kept.add(key)


def wake_dispatcher(request: Request) -> None:
    """An audit was queued (submitted, or answered): this server's dispatcher claims it now."""
    dispatcher: Dispatcher = request.app.state.dispatcher
    dispatcher.wake()
