"""Audit workers that start together on a fresh PostgreSQL database all get a checkpointer.

Found in CI: several workers ran LangGraph's schema migrations at once and one failed its audit
("duplicate key value violates unique constraint checkpoint_migrations_pkey").
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

from tests.pg_server import create_database
from torchdoctor.agent.durable_pg import open_postgres_store

WORKERS = 6


def _open_and_record(url: str, audit_id: str) -> str:
    with open_postgres_store(url) as store:
        store.record(audit_id, "train.py")
        entry = store.entry(audit_id)
        assert entry is not None
        return entry.audit_id


def test_workers_starting_together_on_a_fresh_database_all_get_a_checkpointer(
    postgres_url: str,
) -> None:
    url = create_database(postgres_url, f"td_{uuid.uuid4().hex[:12]}")
    ids = [f"audit-{n}" for n in range(WORKERS)]
    with ThreadPoolExecutor(WORKERS) as pool:
        recorded = list(pool.map(lambda audit_id: _open_and_record(url, audit_id), ids))
    assert recorded == ids
