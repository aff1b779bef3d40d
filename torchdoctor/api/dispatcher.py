"""The loop that feeds the executor from the store's queue, keeps leases, enforces cancels.

Every server process runs one. Each tick it renews the leases of the audits it runs and kills
those it no longer holds (cancelled by a DELETE that any server process took); then it claims
queued audits, and running ones whose lease ran out (their server died), up to its free
slots. A lease lives as long as its server: a crashed server's audits are resumed elsewhere.
Store calls go to a thread.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from anyio import to_thread

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

    async def run_forever(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("dispatcher tick failed")
            await asyncio.sleep(self.interval_s)

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
