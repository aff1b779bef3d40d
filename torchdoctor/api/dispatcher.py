"""The loop that feeds the executor from the store's queue, keeps leases, enforces cancels.

Every server process runs one. Each tick it renews the leases of the audits it runs and kills
those it no longer holds (cancelled by a DELETE that any server process took); then it claims
queued audits, and running ones whose lease ran out (their server died), up to its free
slots. A lease lives as long as its server: a crashed server's audits are resumed elsewhere.
Store calls go to a thread. A tick also comes at once when a worker ends or an audit is
submitted to this server (`wake`): under load a freed slot is not left idle until the next
tick, which with sub-second audits would cost a sizeable share of the pool.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from contextlib import suppress

from anyio import to_thread
from starlette.requests import Request

from torchdoctor.api.executor import Executor
from torchdoctor.api.store.store import Store

log = logging.getLogger("torchdoctor.api")


class Dispatcher:
    def __init__(
        self, store: Store, executor: Executor, lease_s: float, interval_s: float = 0.25
    ) -> None:
        self.store = store
        self.executor = executor
        self.lease_s = lease_s
        self.interval_s = interval_s
        self.owner = uuid.uuid4().hex
        self._loop: asyncio.AbstractEventLoop | None = None
        self._woken = asyncio.Event()
        executor.watch_ends(self.wake)

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
        held = await to_thread.run_sync(self.store.renew_leases, running, self.owner, self.lease_s)
        for audit_id in running:
            if audit_id not in held:
                await to_thread.run_sync(self.executor.kill, audit_id)
                log.info("released (finished or cancelled)", extra={"audit_id": audit_id})
        for _ in range(self.executor.free_slots()):
            claimed = await to_thread.run_sync(self.store.claim, self.owner, self.lease_s)
            if claimed is None:
                break
            await to_thread.run_sync(self.executor.start, claimed, self.owner)
            log.info("started", extra={"audit_id": claimed})


def wake_dispatcher(request: Request) -> None:
    """An audit was queued (submitted, or answered): this server's dispatcher claims it now."""
    dispatcher: Dispatcher = request.app.state.dispatcher
    dispatcher.wake()
