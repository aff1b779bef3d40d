"""Audit checkpoints in PostgreSQL (LangGraph's PostgresSaver) with the same audit index as
the SQLite store: servers that share a database resume each other's audits.

Chosen by `TORCHDOCTOR_DATABASE_URL=postgresql://...` (the API's database); needs the `api`
extra (psycopg, langgraph-checkpoint-postgres).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from langgraph.checkpoint.postgres import PostgresSaver
from psycopg import Connection
from psycopg.rows import dict_row

from torchdoctor.agent.durable import AuditEntry, serializer

_INDEX = """
create table if not exists torchdoctor_audits (
    audit_id text primary key,
    target text not null,
    created_at double precision not null,
    updated_at double precision not null
)
"""
# Workers and servers that start at once would race on the schema migrations (two inserts of one
# migration version, or two `create table if not exists`): one at a time, under this lock. It is
# polled, never waited on: a waiting transaction would deadlock with a migration's
# `create index concurrently`, which waits for every open transaction to end.
_SCHEMA_LOCK = 0x74_6F_72_63_68_64  # "torchd"
_LOCK_POLL_S = 0.05


class PostgresAuditStore:
    """The checkpointer and the audit index, on one autocommit connection."""

    def __init__(self, connection: Connection[dict[str, Any]]) -> None:
        self.connection = connection
        self.saver = PostgresSaver(connection, serde=serializer())
        while not _try_lock(connection):
            time.sleep(_LOCK_POLL_S)
        try:
            self.saver.setup()
            connection.execute(_INDEX)
        finally:
            connection.execute("select pg_advisory_unlock(%s)", (_SCHEMA_LOCK,))

    def record(self, audit_id: str, target: str) -> None:
        now = time.time()
        self.connection.execute(
            "insert into torchdoctor_audits values (%s, %s, %s, %s) "
            "on conflict (audit_id) do update set updated_at = excluded.updated_at",
            (audit_id, target, now, now),
        )

    def entry(self, audit_id: str) -> AuditEntry | None:
        row = self.connection.execute(
            "select audit_id, target, created_at, updated_at from torchdoctor_audits "
            "where audit_id = %s",
            (audit_id,),
        ).fetchone()
        return AuditEntry.model_validate(row) if row else None

    def prune(self, older_than_days: float) -> list[str]:
        """Forget the audits untouched for longer than `older_than_days`; returns their ids."""
        cutoff = time.time() - older_than_days * 86400
        rows = self.connection.execute(
            "select audit_id from torchdoctor_audits where updated_at < %s", (cutoff,)
        ).fetchall()
        old = [str(row["audit_id"]) for row in rows]
        for audit_id in old:
            self.saver.delete_thread(audit_id)
            self.connection.execute(
                "delete from torchdoctor_audits where audit_id = %s", (audit_id,)
            )
        return old


@contextmanager
def open_postgres_store(url: str) -> Iterator[PostgresAuditStore]:
    with Connection.connect(
        url, autocommit=True, prepare_threshold=0, row_factory=dict_row
    ) as connection:
        yield PostgresAuditStore(connection)


def _try_lock(connection: Connection[dict[str, Any]]) -> bool:
    row = connection.execute("select pg_try_advisory_lock(%s) as held", (_SCHEMA_LOCK,)).fetchone()
    return bool(row and row["held"])
