"""The REST API end to end against a real server (SQLite and PostgreSQL): submit, follow,
fetch, decide, cancel; every error path answers one line; tenants never see each other."""

from __future__ import annotations

import io
import tarfile
import time
import uuid
import zipfile
from typing import Any

import httpx
import psutil
import pytest

from tests.api.server import Server, events, wait_for
from tests.conftest import EXAMPLES

BUGGY = (EXAMPLES / "train_buggy.py").read_text(encoding="utf-8")
SLEEPY = "import time\n\nif __name__ == '__main__':\n    time.sleep(120)\n"


@pytest.fixture(scope="module")
def keys(server: Server) -> dict[str, str]:
    return {tenant: server.key(tenant) for tenant in ("acme", "other", "capped", "limited")}


@pytest.fixture(scope="module")
def acme(server: Server, keys: dict[str, str]) -> httpx.Client:
    return server.client(keys["acme"])


@pytest.fixture(scope="module")
def finished(acme: httpx.Client) -> tuple[str, list[tuple[int, str, Any]]]:
    """One audit of the bundled example, followed to its end over SSE."""
    answer = acme.post(
        "/v1/audits", json={"files": {"train.py": BUGGY}, "options": {"offline": True}}
    )
    assert answer.status_code == 202, answer.text
    audit_id = answer.json()["id"]
    assert answer.headers["location"].endswith(f"/v1/audits/{audit_id}")
    return audit_id, list(events(acme, audit_id))


def test_health_readiness_metrics_and_docs(server: Server, finished: Any) -> None:
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/readyz").json()
    assert ready["store"] == "ok" and ready["sandbox"].startswith("ok")
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'torchdoctor_audits{state="done"} 1.0' in metrics
    assert "torchdoctor_audit_duration_seconds_count 1.0" in metrics
    assert "torchdoctor_sandbox_runs_total" in metrics and "torchdoctor_llm_tokens_total" in metrics
    assert "swagger" in httpx.get(f"{server.url}/docs").text.lower()
    spec = httpx.get(f"{server.url}/openapi.json").json()
    submit = spec["paths"]["/v1/audits"]["post"]["requestBody"]["content"]
    assert set(submit) == {"application/json", "multipart/form-data"}
    assert spec["components"]["schemas"]["SubmitFiles"]["examples"]


def test_every_audit_route_needs_a_valid_key(server: Server, keys: dict[str, str]) -> None:
    assert httpx.get(f"{server.url}/v1/audits").status_code == 401
    bad = httpx.get(f"{server.url}/v1/audits", headers={"Authorization": "Bearer td_x_y"})
    assert bad.status_code == 401 and bad.json() == {"detail": "unknown or revoked API key"}
    store = server.store()
    key_id, key = store.create_key("acme")
    assert server.client(key).get("/v1/audits").status_code == 200
    assert store.revoke_key(key_id)
    assert server.client(key).get("/v1/audits").status_code == 401


def test_the_audit_is_followed_live_to_its_end(
    acme: httpx.Client, finished: tuple[str, list[tuple[int, str, Any]]]
) -> None:
    audit_id, stream = finished
    states = [data["state"] for _, kind, data in stream if kind == "state"]
    assert states[0] == "queued" and states[-1] == "done" and "running" in states
    assert {data["point"] for _, kind, data in stream if kind == "point"} == set(range(1, 13))
    ids = [event_id for event_id, _, _ in stream]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    status = acme.get(f"/v1/audits/{audit_id}").json()
    assert status["state"] == "done" and status["error"] is None
    assert all(phase["done"] for phase in status["phases"])
    assert all(point["done"] for phase in status["phases"] for point in phase["points"])
    report = acme.get(f"/v1/audits/{audit_id}/report").json()
    assert status["findings"] == len(report["findings"]) > 0
    assert sum(p["findings"] for ph in status["phases"] for p in ph["points"]) >= status["findings"]
    assert audit_id in [a["id"] for a in acme.get("/v1/audits").json()]


def test_events_resume_after_last_event_id(
    acme: httpx.Client, finished: tuple[str, list[tuple[int, str, Any]]]
) -> None:
    audit_id, stream = finished
    middle = stream[len(stream) // 2][0]
    rest = list(events(acme, audit_id, after=middle))
    assert rest == [event for event in stream if event[0] > middle]


def test_reports_in_three_formats(acme: httpx.Client, finished: Any) -> None:
    audit_id, _ = finished
    as_json = acme.get(f"/v1/audits/{audit_id}/report", params={"format": "json"})
    assert as_json.headers["content-type"].startswith("application/json")
    assert as_json.json()["schema_version"] == 1
    sarif = acme.get(f"/v1/audits/{audit_id}/report", params={"format": "sarif"})
    assert sarif.json()["version"] == "2.1.0"
    markdown = acme.get(f"/v1/audits/{audit_id}/report", params={"format": "markdown"})
    assert markdown.text.startswith("# torchdoctor") and "train.py" in markdown.text
    assert acme.get(f"/v1/audits/{audit_id}/report?format=pdf").status_code == 422


def test_findings_filter_by_point_severity_and_status(acme: httpx.Client, finished: Any) -> None:
    audit_id, _ = finished
    everything = acme.get(f"/v1/audits/{audit_id}/findings").json()
    point = everything[0]["checkpoint"]
    by_point = acme.get(f"/v1/audits/{audit_id}/findings", params={"point": point}).json()
    assert by_point and all(f["checkpoint"] == point for f in by_point)
    high = acme.get(f"/v1/audits/{audit_id}/findings", params={"severity": "high"}).json()
    assert {f["id"] for f in high} == {f["id"] for f in everything if f["severity"] == "high"}
    opened = acme.get(f"/v1/audits/{audit_id}/findings", params={"status": "open"}).json()
    assert len(opened) == sum(1 for f in everything if f["status"] == "open")
    assert acme.get(f"/v1/audits/{audit_id}/findings", params={"point": 13}).status_code == 422


def test_a_decision_on_a_finding_is_kept_in_the_ledger(acme: httpx.Client, finished: Any) -> None:
    audit_id, _ = finished
    target = acme.get(f"/v1/audits/{audit_id}/findings").json()[-1]["id"]
    reason = "seeded by the launcher | not here"
    answer = acme.patch(
        f"/v1/audits/{audit_id}/findings/{target}", json={"status": "wont-fix", "reason": reason}
    )
    assert answer.status_code == 200 and answer.json()["status"] == "wont-fix"
    ledger = acme.get(f"/v1/audits/{audit_id}/ledger").text
    entry = ledger[ledger.index(f"#### {target}") :]
    assert "wont-fix — seeded by the launcher" in entry.split("####")[1]
    statuses = acme.get(f"/v1/audits/{audit_id}/findings", params={"status": "wont-fix"}).json()
    assert [f["id"] for f in statuses] == [target]
    assert (
        acme.patch(
            f"/v1/audits/{audit_id}/findings/{target}", json={"status": "fixed", "reason": "x"}
        ).status_code
        == 422
    )
    assert (
        acme.patch(
            f"/v1/audits/{audit_id}/findings/TD-000000000000",
            json={"status": "wont-fix", "reason": "x"},
        ).status_code
        == 404
    )


def test_fixes_not_asked_for_leave_an_empty_patch(acme: httpx.Client, finished: Any) -> None:
    audit_id, _ = finished
    finding = acme.get(f"/v1/audits/{audit_id}/findings").json()[0]["id"]
    assert acme.get(f"/v1/audits/{audit_id}/fixes/{finding}.diff").status_code == 404
    patch = acme.get(f"/v1/audits/{audit_id}/patch")
    assert patch.status_code == 200 and patch.text == ""


def test_another_tenants_audit_does_not_exist(
    server: Server, keys: dict[str, str], finished: Any
) -> None:
    audit_id, _ = finished
    other = server.client(keys["other"])
    finding = "TD-000000000000"
    for method, path in [
        ("GET", ""),
        ("GET", "/events"),
        ("GET", "/report"),
        ("GET", "/ledger"),
        ("GET", "/findings"),
        ("GET", f"/fixes/{finding}.diff"),
        ("GET", "/patch"),
        ("GET", "/approvals"),
        ("DELETE", ""),
    ]:
        answer = other.request(method, f"/v1/audits/{audit_id}{path}")
        assert answer.status_code == 404, (method, path, answer.text)
    answer = other.patch(
        f"/v1/audits/{audit_id}/findings/{finding}", json={"status": "wont-fix", "reason": "x"}
    )
    assert answer.status_code == 404
    assert audit_id not in [a["id"] for a in other.get("/v1/audits").json()]


BODIES = {
    ("patch", "/v1/audits/{audit_id}/findings/{finding_id}"): {"status": "wont-fix", "reason": "x"},
    ("post", "/v1/audits/{audit_id}/approvals"): {"decisions": []},
    ("post", "/v1/sessions/{session_id}/messages"): {"text": "help"},
}
"""A valid body for each route that takes one: a refusal must come from the tenant check."""


def test_no_route_discloses_another_tenants_audit_or_session(
    server: Server, acme: httpx.Client, keys: dict[str, str], finished: Any
) -> None:
    """Every route of the OpenAPI document that names an audit or a session answers another
    tenant exactly as it answers an id that does not exist."""
    audit_id, _ = finished
    session = acme.post("/v1/sessions", json={"audit_id": audit_id})
    assert session.status_code == 201, session.text
    finding = acme.get(f"/v1/audits/{audit_id}/findings").json()[0]["id"]
    theirs = {"audit_id": audit_id, "session_id": session.json()["id"]}
    unknown = {"audit_id": uuid.uuid4().hex, "session_id": uuid.uuid4().hex}
    fixed = {"finding_id": finding, "index": "0", "kind": "loss"}
    other = server.client(keys["other"])
    checked = []
    for path, methods in acme.get("/openapi.json").json()["paths"].items():
        named = [name for name in theirs if f"{{{name}}}" in path]
        if not named:
            continue
        for method in methods:
            body = BODIES.get((method, path))
            answers = []
            for ids in (theirs, unknown):
                url = path.format(**fixed, **ids)
                answer = other.request(method.upper(), url, json=body)
                detail = answer.json()["detail"]
                answers.append((answer.status_code, detail.replace(ids[named[0]], "ID")))
            assert answers[0] == answers[1] and answers[0][0] == 404, (method, path, answers)
            checked.append((method, path))
    assert len(checked) >= 18, checked  # 13 audit routes, 5 session routes


def _zip_slip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        bundle.writestr("../../escaped.py", "x = 1\n")
    return buffer.getvalue()


def _tarball(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_bad_submissions_get_a_one_line_reason(server: Server, acme: httpx.Client) -> None:
    def refused(answer: httpx.Response, code: int, words: str) -> None:
        assert answer.status_code == code, answer.text
        detail = answer.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail and words in detail

    refused(acme.post("/v1/audits", content=b"x", headers={"content-type": "text/plain"}), 415, "")
    refused(acme.post("/v1/audits", json={"options": {}}), 400, "exactly one of")
    refused(acme.post("/v1/audits", json={"files": {"a.py": ""}, "path": "/"}), 400, "one of")
    refused(acme.post("/v1/audits", json={"files": {"../a.py": "x"}}), 400, "'..' in a path")
    refused(acme.post("/v1/audits", json={"files": {}, "options": {"steps": 0}}), 422, "steps")
    refused(acme.post("/v1/audits", json={"files": {}, "options": {"sandbox": "x"}}), 422, "")
    refused(
        acme.post("/v1/audits", files={"archive": ("a.zip", _zip_slip())}), 400, "'..' in a path"
    )
    refused(
        acme.post("/v1/audits", files={"archive": ("a.bin", b"garbage")}), 400, "not a readable"
    )
    refused(
        acme.post(
            "/v1/audits",
            files={"archive": ("a.tgz", _tarball({"a.py": "x = 1\n"}))},
            data={"options": '{"stepz": 3}'},
        ),
        422,
        "stepz",
    )
    refused(acme.post("/v1/audits", json={"files": {"a.py": "#" * 300_000}}), 413, "larger")
    refused(acme.post("/v1/audits", json={"path": "/etc"}), 400, "not under an allowed root")
    assert not (server.home / "escaped.py").exists()


def test_a_tarball_and_a_server_path_are_accepted(server: Server, acme: httpx.Client) -> None:
    uploaded = acme.post(
        "/v1/audits", files={"archive": ("code.tgz", _tarball({"pkg/train.py": BUGGY}))}
    )
    assert uploaded.status_code == 202, uploaded.text
    root = server.settings["TORCHDOCTOR_ALLOWED_ROOTS"]
    project = f"{root}/project-{uuid.uuid4().hex[:6]}"
    import pathlib

    pathlib.Path(project).mkdir()
    pathlib.Path(project, "train.py").write_text(BUGGY)
    by_path = acme.post("/v1/audits", json={"path": project, "options": {"offline": True}})
    assert by_path.status_code == 202, by_path.text
    for answer in (uploaded, by_path):
        done = wait_for(acme, answer.json()["id"], {"done", "failed"})
        assert done["state"] == "done", done
        assert done["findings"] > 0


def test_the_rate_limit_answers_429_with_retry_after(server: Server, keys: dict[str, str]) -> None:
    limited = server.client(keys["limited"])
    responses = [limited.get("/v1/audits") for _ in range(150)]
    answers = [r.status_code for r in responses]
    assert answers.count(429) > 0 and answers[0] == 200
    # every refusal says when to come back (a request after the burst may find the bucket
    # refilled on a slow machine, so the refusals themselves are checked)
    refused = [r for r in responses if r.status_code == 429]
    assert all(int(r.headers["retry-after"]) >= 1 for r in refused)


def _jobs_with(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


def test_running_audits_are_capped_and_cancel_kills_their_sandbox_jobs(
    server: Server, keys: dict[str, str]
) -> None:
    capped = server.client(keys["capped"])
    marker = f"sleepy_{uuid.uuid4().hex[:8]}.py"
    submission = {
        "files": {marker: SLEEPY},
        "options": {"offline": True, "run": [f"python {marker}"], "steps": 1},
    }
    ids = [capped.post("/v1/audits", json=submission).json()["id"] for _ in range(3)]
    over = capped.post("/v1/audits", json=submission)
    assert over.status_code == 429 and int(over.headers["retry-after"]) > 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not _jobs_with(marker):
        time.sleep(0.3)
    assert _jobs_with(marker), "no sandbox job started"
    for audit_id in ids:
        answer = capped.delete(f"/v1/audits/{audit_id}")
        assert answer.status_code == 200 and answer.json()["state"] == "cancelled"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (_jobs_with(marker) or _jobs_with(ids[0])):
        time.sleep(0.3)
    assert not _jobs_with(marker), "a sandbox job outlived its cancelled audit"
    assert not any(_jobs_with(audit_id) for audit_id in ids), "a worker outlived its audit"
    assert capped.delete(f"/v1/audits/{ids[0]}").status_code == 200
    assert capped.post("/v1/audits", json=submission).status_code == 202
    assert capped.get(f"/v1/audits/{ids[0]}/report").status_code == 409
