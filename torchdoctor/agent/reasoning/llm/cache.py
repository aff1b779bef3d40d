"""On-disk cache of model answers and endpoint probes, so re-auditing unchanged code is free.

Answers are keyed by the model and a hash of everything that shapes the answer (messages,
response schema, temperature, seed). One SQLite file under the cache dir; each operation opens
its own connection, so the threads of a parallel phase can share the cache.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from torchdoctor.agent.home import private_file

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY, model TEXT NOT NULL, content TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS probes (key TEXT PRIMARY KEY, data TEXT NOT NULL, created REAL NOT NULL);
"""


class CachedAnswer(BaseModel):
    content: str
    prompt_tokens: int
    completion_tokens: int


def answer_key(model: str, payload: Any) -> str:
    """Stable hash of a request's meaning (JSON with sorted keys)."""
    text = json.dumps({"model": model, "payload": payload}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class ResponseCache:
    def __init__(self, directory: Path) -> None:
        self.path = private_file(directory / "cache.sqlite3")
        with closing(self._connect()) as db, db:
            db.executescript(_SCHEMA)
        private_file(self.path)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        return db

    def get(self, key: str) -> CachedAnswer | None:
        with closing(self._connect()) as db:
            row = db.execute(
                "SELECT content, prompt_tokens, completion_tokens FROM answers WHERE key = ?",
                (key,),
            ).fetchone()
        if row is None:
            return None
        return CachedAnswer(content=row[0], prompt_tokens=row[1], completion_tokens=row[2])

    def put(self, key: str, model: str, answer: CachedAnswer) -> None:
        with closing(self._connect()) as db, db:
            db.execute(
                "INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?)",
                (
                    key,
                    model,
                    answer.content,
                    answer.prompt_tokens,
                    answer.completion_tokens,
                    time.time(),
                ),
            )

    def get_probe(self, key: str) -> dict[str, Any] | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT data FROM probes WHERE key = ?", (key,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def put_probe(self, key: str, data: dict[str, Any]) -> None:
        with closing(self._connect()) as db, db:
            db.execute(
                "INSERT OR REPLACE INTO probes VALUES (?, ?, ?)",
                (key, json.dumps(data, sort_keys=True), time.time()),
            )
