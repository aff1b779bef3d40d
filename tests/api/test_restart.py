"""Restart safety: kill -9 the server mid-audit, start it again on the same store: the audit
is taken up again and completes, no finding lost or duplicated, and an SSE client that
reconnects with Last-Event-ID gets the rest of the stream; `torchdoctor submit --wait`'s client
follows through the restart by itself."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.api.server import Server, events, wait_for
from tests.api.test_api import BUGGY, _jobs_with
from torchdoctor.api.client import Client

# Longer than the check's window (`VANISH_S`), so the job can only vanish within it by being
# killed; short, because the resumed audit runs it again in full.
NAPPING = "import time\n\nif __name__ == '__main__':\n    time.sleep(10)\n"
VANISH_S = 8

pytestmark = pytest.mark.slow


def test_an_audit_survives_a_killed_server(server: Server) -> None:
    client = server.client(server.key("acme"))
    reference = client.post(
        "/v1/audits", json={"files": {"train.py": BUGGY}, "options": {"offline": True}}
    ).json()["id"]
    wait_for(client, reference, {"done"})
    expected = {f["id"] for f in client.get(f"/v1/audits/{reference}/findings").json()}

    marker = f"napping_{uuid.uuid4().hex[:8]}.py"
    submission = {
        "files": {"train.py": BUGGY, marker: NAPPING},
        "options": {"offline": True, "run": [f"python {marker}"], "steps": 1},
    }
    audit_id = client.post("/v1/audits", json=submission).json()["id"]
    seen: list[tuple[int, str, Any]] = []

    def follow() -> None:
        with contextlib.suppress(httpx.HTTPError):
            seen.extend(events(client, audit_id))

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    key = client.headers["authorization"].removeprefix("Bearer ")
    through: list[int] = []  # what the user's client sees, restart included
    users = threading.Thread(
        target=lambda: through.extend(e.id for e in Client(server.url, key).events(audit_id)),
        daemon=True,
    )
    users.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not _jobs_with(marker):
        time.sleep(0.1)
    assert _jobs_with(marker), "the audit never reached its sandbox run"
    server.kill()
    follower.join(timeout=30)
    assert seen and not follower.is_alive()
    deadline = time.monotonic() + VANISH_S
    while time.monotonic() < deadline and _jobs_with(marker):
        time.sleep(0.2)
    assert not _jobs_with(marker), "the sandbox job outlived its server"

    server.start()
    client = server.client(key)
    rest = list(events(client, audit_id, after=seen[-1][0]))
    assert rest and all(event_id > seen[-1][0] for event_id, _, _ in rest)
    assert rest[-1][1:] == ("state", {"state": "done"})
    status = client.get(f"/v1/audits/{audit_id}").json()
    assert status["state"] == "done" and status["attempts"] == 2
    findings = [f["id"] for f in client.get(f"/v1/audits/{audit_id}/findings").json()]
    assert len(findings) == len(set(findings)), "a finding was duplicated"
    assert expected <= set(findings), "a finding was lost"
    assert httpx.get(f"{server.url}/readyz").status_code == 200
    users.join(timeout=60)
    assert not users.is_alive(), "the user's client did not follow through the restart"
    assert through == sorted(set(through)) and through[-1] == rest[-1][0]
    assert {event_id for event_id, _, _ in [*seen, *rest]} <= set(through)
