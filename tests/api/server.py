"""A real `torchdoctor serve` on 127.0.0.1 for the API tests, on SQLite or PostgreSQL; it dies
with the test process that started it (an interrupted run leaves none behind)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.pg_server import free_port
from torchdoctor.api.store.engine import migrate, open_engine
from torchdoctor.api.store.store import Store
from torchdoctor.sandbox.lifeline import die_with_parent

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    """One server process; `kill()` is kill -9, `start()` starts it again on the same state."""

    home: Path
    database_url: str
    settings: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    _store: Store | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHDOCTOR_")}
        env.update(
            TORCHDOCTOR_HOME=str(self.home),
            TORCHDOCTOR_DATABASE_URL=self.database_url,
            TORCHDOCTOR_HOST="127.0.0.1",
            TORCHDOCTOR_PORT=str(self.port),
            TORCHDOCTOR_LINTERS="0",
            TORCHDOCTOR_SANDBOX="local",
            TORCHDOCTOR_LEASE_SECONDS="3",
        )
        env.update(self.settings)  # a caller's settings override these defaults
        return env

    def start(self, timeout_s: float = 120.0) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "torchdoctor", "serve"],
            env=self.env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=open(self.home / "server.log", "ab"),  # noqa: SIM115 - the server owns it
            preexec_fn=die_with_parent,  # an interrupted run leaves no server
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.log()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server did not answer in {timeout_s}s: {self.log()[-2000:]}")

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        path = self.home / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def store(self) -> Store:
        """One store per server for the test process (one engine on the file)."""
        if self._store is None:
            engine = open_engine(self.database_url)
            migrate(engine)
            self._store = Store(engine)
        return self._store

    def key(self, tenant: str) -> str:
        return self.store().create_key(tenant)[1]

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        )


def events(client: httpx.Client, audit_id: str, after: int = 0) -> Iterator[tuple[int, str, Any]]:
    """(id, type, data) of the audit's SSE stream from `after` until the server ends it."""
    fields: dict[str, str] = {}
    with client.stream(
        "GET",
        f"/v1/audits/{audit_id}/events",
        headers={"Last-Event-ID": str(after)},
        timeout=httpx.Timeout(120, read=120),
    ) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line:
                if "id" in fields:
                    yield int(fields["id"]), fields.get("event", ""), json.loads(fields["data"])
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.lstrip(" ")


def wait_for(
    client: httpx.Client, audit_id: str, states: set[str], timeout_s: float = 180.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status: dict[str, Any] = client.get(f"/v1/audits/{audit_id}").json()
        if status["state"] in states:
            return status
        time.sleep(0.5)  # within the suite's rate limit (2 requests a second)
    raise AssertionError(f"audit {audit_id} still {status['state']} after {timeout_s}s")
