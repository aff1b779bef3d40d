"""Typed access to review sessions and their messages. Every lookup takes the caller's tenant:
another tenant's session is simply not found."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pydantic import BaseModel, TypeAdapter
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session, sessionmaker

from torchdoctor.agent.session.models import Block, Message, SessionState
from torchdoctor.api.store.tables import SessionMessageRow, SessionRow

_BLOCKS: TypeAdapter[list[Block]] = TypeAdapter(list[Block])


class SessionRecord(BaseModel):
    id: str
    tenant: str
    source: str
    state: SessionState
    revision: int
    created_at: float
    updated_at: float


def _record(row: SessionRow) -> SessionRecord:
    return SessionRecord(
        id=row.id,
        tenant=row.tenant,
        source=row.source,
        state=SessionState.model_validate_json(row.state),
        revision=row.revision,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _message(row: SessionMessageRow) -> Message:
    return Message(
        id=row.id,
        role=row.role,
        blocks=_BLOCKS.validate_json(row.blocks),
        created_at=row.created_at,
    )


class SessionStore:
    def __init__(self, engine: Engine) -> None:
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def create(self, session_id: str, tenant: str, source: str, state: SessionState) -> None:
        now = time.time()
        with self._session() as session:
            session.add(
                SessionRow(
                    id=session_id,
                    tenant=tenant,
                    source=source,
                    state=state.model_dump_json(),
                    revision=0,
                    created_at=now,
                    updated_at=now,
                )
            )

    def get(self, session_id: str, tenant: str) -> SessionRecord | None:
        with self._session() as session:
            row = session.get(SessionRow, session_id)
            if row is None or row.tenant != tenant:
                return None
            return _record(row)

    def recent(self, tenant: str, limit: int = 100) -> list[SessionRecord]:
        with self._session() as session:
            rows = session.scalars(
                select(SessionRow)
                .where(SessionRow.tenant == tenant)
                .order_by(SessionRow.updated_at.desc())
                .limit(limit)
            ).all()
            return [_record(r) for r in rows]

    def save(self, record: SessionRecord, state: SessionState, messages: list[Message]) -> bool:
        """Store the new state and messages, unless another turn saved first (compare-and-set
        on the revision): then nothing is written and the caller retries or refuses."""
        now = time.time()
        with self._session() as session:
            result = session.execute(
                update(SessionRow)
                .where(SessionRow.id == record.id, SessionRow.revision == record.revision)
                .values(state=state.model_dump_json(), revision=record.revision + 1, updated_at=now)
            )
            if getattr(result, "rowcount", 0) != 1:
                return False
            for message in messages:
                session.add(
                    SessionMessageRow(
                        session_id=record.id,
                        role=message.role,
                        blocks=json.dumps([b.model_dump(mode="json") for b in message.blocks]),
                        created_at=message.created_at or now,
                    )
                )
            return True

    def messages(self, session_id: str, after: int = 0, limit: int = 500) -> list[Message]:
        with self._session() as session:
            rows = session.scalars(
                select(SessionMessageRow)
                .where(SessionMessageRow.session_id == session_id, SessionMessageRow.id > after)
                .order_by(SessionMessageRow.id)
                .limit(limit)
            ).all()
            return [_message(r) for r in rows]
