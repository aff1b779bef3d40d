"""The API suite runs against a real server on 127.0.0.1, once on SQLite and once on a real
PostgreSQL that the tests start (skipped, saying why, where none can start)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.server import Server
from tests.pg_server import create_database


def database_url(request: pytest.FixtureRequest, backend: str, home: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{home / 'api.sqlite'}"
    server_url: str = request.getfixturevalue("postgres_url")
    return create_database(server_url, f"td_{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("api-home")
    roots = tmp_path_factory.mktemp("allowed-root")
    settings = {
        "TORCHDOCTOR_ALLOWED_ROOTS": str(roots),
        "TORCHDOCTOR_MAX_BODY_BYTES": str(256 * 1024),
        "TORCHDOCTOR_RATE_LIMIT_PER_MINUTE": "120",
        "TORCHDOCTOR_MAX_RUNNING_PER_TENANT": "3",
        **getattr(request.module, "SERVER_SETTINGS", {}),
    }
    running = Server(home, database_url(request, request.param, home), settings)
    running.start()
    try:
        yield running
    finally:
        running.stop()
