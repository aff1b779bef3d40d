"""Where audits are checkpointed: one SQLite file under `$TORCHDOCTOR_HOME` (0600 in a 0700
folder), an index of the audits it holds, and their pruning.

Every node's result is checkpointed, so `torchdoctor audit --resume ID` continues an audit
that was interrupted (a crash, a kill, a question left unanswered).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from torchdoctor.agent.durable_pg import PostgresAuditStore

from torchdoctor.agent.channel_saver import ChannelBlobSaver
from torchdoctor.agent.home import private_file, torchdoctor_home
from torchdoctor.agent.state import STATE_ENUMS, STATE_MODELS

CHECKPOINTS = "checkpoints.sqlite"
DEFAULT_RETENTION_DAYS = 14.0
_INDEX = """
create table if not exists torchdoctor_audits (
    audit_id text primary key,
    target text not null,
    created_at real not null,
    updated_at real not null
)
"""


class AuditEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    audit_id: str
    target: str
    created_at: float
    updated_at: float


def checkpoints_path() -> Path:
    return torchdoctor_home() / CHECKPOINTS


def retention_days() -> float:
    """`TORCHDOCTOR_RETENTION_DAYS` (default 14): audits untouched longer are pruned."""
    raw = os.environ.get("TORCHDOCTOR_RETENTION_DAYS", "")
    try:
        return float(raw) if raw else DEFAULT_RETENTION_DAYS
    except ValueError:
        return DEFAULT_RETENTION_DAYS


def serializer() -> JsonPlusSerializer:
    """The state's own models are the only classes a checkpoint may rebuild."""
    allowed = [(model.__module__, model.__name__) for model in (*STATE_MODELS, *STATE_ENUMS)]
    return JsonPlusSerializer(allowed_msgpack_modules=allowed)


class AuditStore:
    """The checkpointer and the audit index, on one connection."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection
        self.saver = ChannelBlobSaver(connection, serde=serializer())

    def record(self, audit_id: str, target: str) -> None:
        now = time.time()
        with self.connection:
            self.connection.execute(
                "insert into torchdoctor_audits values (?, ?, ?, ?) "
                "on conflict(audit_id) do update set updated_at = excluded.updated_at",
                (audit_id, target, now, now),
            )

    def entry(self, audit_id: str) -> AuditEntry | None:
        row = self.connection.execute(
            "select audit_id, target, created_at, updated_at from torchdoctor_audits "
            "where audit_id = ?",
            (audit_id,),
        ).fetchone()
        if row is None:
            return None
        return AuditEntry(audit_id=row[0], target=row[1], created_at=row[2], updated_at=row[3])

    def prune(self, older_than_days: float) -> list[str]:
        """Forget the audits untouched for longer than `older_than_days`; returns their ids."""
        cutoff = time.time() - older_than_days * 86400
        old = [
            row[0]
            for row in self.connection.execute(
                "select audit_id from torchdoctor_audits where updated_at < ?", (cutoff,)
            )
        ]
        for audit_id in old:
            self.saver.delete_thread(audit_id)
            with self.connection:
                self.connection.execute(
                    "delete from torchdoctor_audits where audit_id = ?", (audit_id,)
                )
        return old


BUSY_TIMEOUT_S = 30.0
"""How long a connection waits for another one's write lock before giving up."""


@contextmanager
def open_store(path: Path | None = None) -> Iterator[AuditStore | PostgresAuditStore]:
    """The audit store at `path` (default under `$TORCHDOCTOR_HOME`), or in PostgreSQL when
    `TORCHDOCTOR_DATABASE_URL` names one (the API's shared database); closed on exit."""
    url = os.environ.get("TORCHDOCTOR_DATABASE_URL", "")
    if path is None and url.startswith(("postgresql://", "postgres://")):
        from torchdoctor.agent.durable_pg import open_postgres_store

        with open_postgres_store(url) as shared:
            yield shared
        return
    path = path or checkpoints_path()
    private_file(path)
    # API workers open the file together and each writes its checkpoints: on a loaded 2-core
    # box a writer held the lock past sqlite3's 5 s default ("database is locked")
    connection = sqlite3.connect(str(path), check_same_thread=False, timeout=BUSY_TIMEOUT_S)
    try:
        connection.execute("pragma journal_mode=wal")
        connection.execute("pragma synchronous=normal")
        connection.execute(_INDEX)
        yield AuditStore(connection)
    finally:
        connection.close()
