"""Review sessions over HTTP against a real server: open one on new code, answer commands from
the evidence with no LLM (English and French), record a decision in the ledger, keep tenants
apart, resume the same session by id after the server restarts, and (slow) run the code under
the probes, then fix, approve and apply through the session, the fix landing in its tree.

On SQLite only, to keep the suite short: the session tables are plain SQLAlchemy, and the
PostgreSQL run of the API suite migrates its database to the same head (sessions included)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.server import Server
from tests.e2e.test_fix_apply_undo import TRAIN
from torchdoctor.agent.ledger import LEDGER_NAME
from torchdoctor.api.terminal.backends import Remote


def settled(client: httpx.Client, session_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        view: dict[str, Any] = client.get(f"/v1/sessions/{session_id}").json()
        if not view["busy"]:
            return view
        time.sleep(0.5)
    raise AssertionError(f"session {session_id} still busy after {timeout_s}s")


def said(messages: list[dict[str, Any]]) -> str:
    parts = ("title", "text", "diff", "rows")
    return "\n".join(
        str(block[part])
        for message in messages
        for block in message["blocks"]
        for part in parts
        if block.get(part)
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home: Path = tmp_path_factory.mktemp("session-home")
    running = Server(home, f"sqlite:///{home / 'api.sqlite'}")
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def acme(server: Server) -> httpx.Client:
    return server.client(server.key("acme"))


@pytest.fixture(scope="module")
def session(acme: httpx.Client) -> dict[str, Any]:
    body = {"files": {"train.py": TRAIN}, "options": {"offline": True}}
    created = acme.post("/v1/sessions", json=body)
    assert created.status_code == 201, created.text
    view = settled(acme, created.json()["id"])
    assert view["findings"] and view["audit_id"]
    return view


def later(client: httpx.Client, session_id: str, after: list[dict[str, Any]]) -> str:
    """What the session said once the audit a command started ended (it must be idle)."""
    settled(client, session_id, timeout_s=400)  # a sandbox run on a busy CI machine
    url = f"/v1/sessions/{session_id}/messages"
    return said(client.get(url, params={"after": after[-1]["id"]}).json())


def send(client: httpx.Client, session_id: str, text: str) -> list[dict[str, Any]]:
    answer = client.post(f"/v1/sessions/{session_id}/messages", json={"text": text})
    assert answer.status_code == 200, answer.text
    messages: list[dict[str, Any]] = answer.json()
    assert messages[0]["role"] == "user" and messages[0]["blocks"][0]["text"] == text
    return messages[1:]


def test_commands_answer_from_the_evidence(acme: httpx.Client, session: dict[str, Any]) -> None:
    sid = session["id"]
    first = acme.get(f"/v1/sessions/{sid}/messages").json()
    assert "finding(s)" in said(first)
    table = send(acme, sid, "findings high")[0]["blocks"][0]
    assert table["kind"] == "table" and table["columns"][0] == "id"
    finding = next(row for row in table["rows"] if "zero_grad" in row[4] or "cleared" in row[4])
    shown = send(acme, sid, f"show {finding[0][:7]}")[0]["blocks"]
    kinds = [b["kind"] for b in shown]
    assert "code" in kinds and "Evidence" in said([{"blocks": shown}])
    assert "Why it matters" in said([{"blocks": shown}])
    assert send(acme, sid, "findings 4 low")[0]["blocks"][0]["tone"] == "note"
    assert "run " in said(send(acme, sid, "help"))
    no_llm = send(acme, sid, "why does this loop diverge?")
    assert "No LLM is configured" in said(no_llm)
    bad = send(acme, sid, "show TD-nothing")
    assert bad[0]["blocks"][0]["tone"] == "error"
    assert "Nothing awaits approval" in said(send(acme, sid, "apply"))

    decided = send(acme, sid, f'status {finding[0]} wont-fix "accumulates on purpose"')
    assert "wont-fix" in said(decided)
    ledger = send(acme, sid, "ledger")[0]["blocks"][0]
    assert ledger["kind"] == "code" and "accumulates on purpose" in ledger["text"]
    assert acme.get(f"/v1/audits/{session['audit_id']}/ledger").text == ledger["text"]
    listed = acme.get(f"/v1/sessions/{sid}/messages", params={"after": first[-1]["id"]}).json()
    assert [m["id"] for m in listed] == sorted(m["id"] for m in listed)
    assert sid in [s["id"] for s in acme.get("/v1/sessions").json()]


def test_a_french_session_on_an_existing_audit(acme: httpx.Client, session: dict[str, Any]) -> None:
    created = acme.post("/v1/sessions", json={"audit_id": session["audit_id"], "lang": "fr"})
    assert created.status_code == 201, created.text
    sid = created.json()["id"]
    assert created.json()["lang"] == "fr" and not created.json()["busy"]
    assert "constat(s)" in said(acme.get(f"/v1/sessions/{sid}/messages").json())
    assert "Aucun LLM" in said(send(acme, sid, "pourquoi ?"))
    assert send(acme, sid, "findings")[0]["blocks"][0]["columns"][1] == "sévérité"


def test_other_tenants_and_bad_requests(
    server: Server, acme: httpx.Client, session: dict[str, Any]
) -> None:
    other = server.client(server.key("other"))
    sid = session["id"]
    assert other.get(f"/v1/sessions/{sid}").status_code == 404
    assert other.post(f"/v1/sessions/{sid}/messages", json={"text": "help"}).status_code == 404
    assert sid not in [s["id"] for s in other.get("/v1/sessions").json()]
    assert other.post("/v1/sessions", json={"audit_id": session["audit_id"]}).status_code == 404
    both = acme.post("/v1/sessions", json={"audit_id": session["audit_id"], "files": {}})
    assert both.status_code == 400 and "exactly one" in both.json()["detail"]
    empty = acme.post(f"/v1/sessions/{sid}/messages", json={"text": ""})
    assert empty.status_code == 422
    spec = acme.get("/openapi.json").json()
    assert {"/v1/sessions", "/v1/sessions/{session_id}/messages"} <= set(spec["paths"])


def test_the_terminal_s_remote_backend_follows_a_rerun(
    acme: httpx.Client, session: dict[str, Any]
) -> None:
    remote = Remote(acme, session["id"])
    assert remote.finding_ids() and all(i.startswith("TD-") for i in remote.finding_ids())
    events: list[dict[str, Any]] = []
    messages = remote.send("rerun", events.append)
    assert [m.role for m in messages] == ["user", "assistant", "assistant"]
    assert "started (rerun)" in messages[1].plain()
    assert "No finding changed" in messages[2].plain()  # the wont-fix kept in ISSUES.md
    assert {"phase", "point"} <= {e["event"] for e in events}
    view = acme.get(f"/v1/sessions/{session['id']}").json()
    assert not view["busy"] and view["audit_id"] != session["audit_id"]


def test_a_session_resumes_by_id_after_a_restart(
    server: Server, acme: httpx.Client, session: dict[str, Any]
) -> None:
    sid = session["id"]
    before = acme.get(f"/v1/sessions/{sid}/messages").json()
    server.kill()
    server.start()
    after = acme.get(f"/v1/sessions/{sid}/messages").json()
    assert after == before
    assert send(acme, sid, "findings")[0]["blocks"][0]["kind"] == "table"


@pytest.mark.slow
def test_run_then_fix_approve_apply_through_the_session(server: Server, acme: httpx.Client) -> None:
    """Every long command sent as a user would: `run` (the probes, in the server's sandbox),
    `fix`, `reject`/`approve`, `apply`; the approved fix is written to the session's tree on
    the server, with its ISSUES.md entry, and comes back in the audit's patch."""
    body = {"files": {"train.py": TRAIN}, "options": {"offline": True, "probes": "cheap"}}
    sid = acme.post("/v1/sessions", json=body).json()["id"]
    static = settled(acme, sid)["audit_id"]

    started = send(acme, sid, 'run "python train.py" --steps 3')
    assert "Running python train.py under the probes for 3 step(s)" in said(started)
    result = later(acme, sid, started)  # the summary, then what the run changed
    assert re.search(r"1 finding\(s\): high 1\.\nNo finding changed", result), result
    ran = acme.get(f"/v1/sessions/{sid}").json()["audit_id"]
    assert ran != static
    runs = acme.get(f"/v1/audits/{ran}/runs").json()
    assert [r["command"] for r in runs] == ["python train.py"] and "loss" in runs[0]["plots"]
    findings = acme.get(f"/v1/audits/{ran}/findings").json()
    finding = next(f for f in findings if f["rule"] == "zero-grad-missing")

    started = send(acme, sid, f"fix {finding['id']}")
    assert "Proposing and verifying fixes" in said(started)
    offered = later(acme, sid, started)
    assert "Proposed fix (verified)" in offered and "zero_grad" in offered, offered
    assert f"approve {finding['id']}" in offered
    fixing = acme.get(f"/v1/sessions/{sid}").json()
    assert fixing["pending"]["changes"][0]["finding_id"] == finding["id"]

    assert "rejected: " in said(send(acme, sid, "reject all"))
    assert "No fix is approved" in said(send(acme, sid, "apply"))
    assert "1 approved, 0 rejected" in said(send(acme, sid, f"approve {finding['id'][:8]}"))
    started = send(acme, sid, "apply")
    assert "Writing 1 approved fix(es)" in said(started)
    assert f"Applied: {finding['id']}." in later(acme, sid, started)

    view = acme.get(f"/v1/sessions/{sid}").json()
    assert view["audit_id"] == fixing["audit_id"] and view["pending"] is None
    tree = server.home / "audits" / view["audit_id"] / "src"
    assert "optimizer.zero_grad(set_to_none=True)" in (tree / "train.py").read_text()
    ledger = (tree / LEDGER_NAME).read_text()
    assert finding["id"] in ledger and "zero-grad-missing" in ledger
    assert "zero_grad" in acme.get(f"/v1/audits/{view['audit_id']}/patch").text
    assert acme.get(f"/v1/audits/{view['audit_id']}/ledger").text == ledger
