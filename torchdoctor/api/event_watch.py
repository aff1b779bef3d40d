"""One look at the store a tick for every event stream a server serves, rather than two per
stream: under load (twenty clients following twenty audits, most of them queued) the streams'
polling cost the server more CPU than the HTTP work itself. A stream waits here for news of its
audit, a newer event (every change of an audit's state writes one), and then reads it.

The store is looked at every `poll_s`, and at once when this server knows news was written
(`wake`: one of its workers ended, or it finished a repeat from a kept result): a client
following a sub-second audit would otherwise see its end up to a tick late, a good part of
the audit's time. Polling stays for what other processes write (workers' progress, other
servers).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress

from anyio import to_thread

from torchdoctor.api.store.store import Store

log = logging.getLogger("torchdoctor.api")


class EventWatch:
    """The newest event id of every audit someone waits on, read once every `poll_s`."""

    def __init__(self, store: Store, poll_s: float) -> None:
        self.store, self.poll_s = store, poll_s
        self._waiting: dict[str, dict[asyncio.Event, int]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._woken = asyncio.Event()

    def wake(self) -> None:
        """Look at the store now rather than at the next tick; callable from any thread."""
        if self._loop is not None and not self._loop.is_closed():
            with suppress(RuntimeError):  # the loop closed meanwhile (shutdown)
                self._loop.call_soon_threadsafe(self._woken.set)

    async def news(self, audit_id: str, after: int, timeout_s: float) -> None:
        """Returns once `audit_id` has an event newer than `after`, or after `timeout_s` (the
        caller then looks for itself, whatever this watch saw)."""
        woken = asyncio.Event()
        waiters = self._waiting.setdefault(audit_id, {})
        waiters[woken] = after
        try:
            with suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), timeout_s)
        finally:
            waiters.pop(woken, None)
            if not waiters:
                self._waiting.pop(audit_id, None)

    async def run_forever(self) -> None:
        self._loop = asyncio.get_running_loop()
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), self.poll_s)
            self._woken.clear()
            if not self._waiting:
                continue
            try:
                newest = await to_thread.run_sync(self.store.newest_event_ids, list(self._waiting))
            except Exception:
                log.exception("event watch failed")  # the streams look again at their timeout
                continue
            for audit_id, waiters in list(self._waiting.items()):
                for woken, after in list(waiters.items()):
                    if newest.get(audit_id, 0) > after:
                        woken.set()
