"""Sessions as stored things: load, take one turn through the engine, save (compare-and-set on
the revision). The REST routes and the terminal's local mode both go through here."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from torchdoctor.agent.context import Progress
from torchdoctor.agent.session.engine import SessionEngine, Turn
from torchdoctor.agent.session.models import Message, SessionState
from torchdoctor.api.store.sessions import SessionRecord, SessionStore

EngineFor = Callable[[SessionRecord], SessionEngine]
HISTORY = 40
"""Earlier messages a turn may read (the LLM sees fewer)."""


class SessionNotFound(LookupError):
    pass


class SessionConflict(RuntimeError):
    """Another turn of the same session was saved meanwhile."""


class SessionService:
    def __init__(self, store: SessionStore, engine_for: EngineFor) -> None:
        self.store = store
        self.engine_for = engine_for

    def create(
        self,
        tenant: str,
        source: str,
        state: SessionState,
        first: Callable[[SessionEngine, SessionState], Turn],
    ) -> SessionRecord:
        """A new session, and its first turn (`open` on an audit, or `start` on new code)."""
        session_id = uuid.uuid4().hex[:16]
        self.store.create(session_id, tenant, source, state)
        record = self.get(tenant, session_id)
        turn = first(self.engine_for(record), record.state)
        self._save(record, turn)
        return self.get(tenant, session_id)

    def get(self, tenant: str, session_id: str) -> SessionRecord:
        record = self.store.get(session_id, tenant)
        if record is None:
            raise SessionNotFound(f"no session {session_id}")
        return record

    def settled(self, tenant: str, session_id: str) -> SessionRecord:
        """The session, once what its awaited audit produced is taken in."""
        record = self.get(tenant, session_id)
        if record.state.waiting is None:
            return record
        turn = self.engine_for(record).settle(record.state)
        if turn.messages and not self.store.save(record, turn.state, turn.messages):
            return self.get(tenant, session_id)  # another reader settled it
        return self.get(tenant, session_id) if turn.messages else record

    def send(
        self, tenant: str, session_id: str, text: str, progress: Progress | None = None
    ) -> list[Message]:
        """One user line; the messages it added (the user's first)."""
        record = self.settled(tenant, session_id)
        history = self.store.messages(session_id)[-HISTORY:]
        turn = self.engine_for(record).handle(record.state, text, history, progress)
        last = history[-1].id if history else 0
        self._save(record, turn)
        return self.store.messages(session_id, after=last)

    def cancel(self, tenant: str, session_id: str) -> list[Message]:
        record = self.get(tenant, session_id)
        last = self._last_id(session_id)
        turn = self.engine_for(record).cancel(record.state)
        self._save(record, turn)
        return self.store.messages(session_id, after=last)

    def messages(self, tenant: str, session_id: str, after: int = 0) -> list[Message]:
        self.settled(tenant, session_id)
        return self.store.messages(session_id, after=after)

    def _last_id(self, session_id: str) -> int:
        history = self.store.messages(session_id)
        return history[-1].id if history else 0

    def _save(self, record: SessionRecord, turn: Turn) -> None:
        if not self.store.save(record, turn.state, turn.messages):
            raise SessionConflict(
                f"session {record.id} changed during this turn: send the line again"
            )
