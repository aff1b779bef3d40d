"""Approval end to end over HTTP: submit code with fixes asked for, follow the SSE stream to
the graph's approval interrupt, approve one verified fix and reject nothing else silently,
and fetch a patch that applies to the code as submitted."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.api.server import Server, events, wait_for
from tests.e2e.test_fix_apply_undo import TRAIN

pytestmark = pytest.mark.slow


def test_approved_fixes_come_back_as_a_patch_that_applies(server: Server, tmp_path: Path) -> None:
    client = server.client(server.key("acme"))
    submission = {
        "files": {"train.py": TRAIN},
        "options": {
            "offline": True,
            "fix": True,
            "run": ["python train.py"],
            "steps": 6,
            "probes": "cheap",
        },
    }
    audit_id = client.post("/v1/audits", json=submission).json()["id"]
    assert client.get(f"/v1/audits/{audit_id}/approvals").json()["pending"] is None

    states = []
    for _, kind, data in events(client, audit_id):
        if kind == "state":
            states.append(data["state"])
            if data["state"] == "waiting-approval":
                break
    assert states[-1] == "waiting-approval", states
    status = client.get(f"/v1/audits/{audit_id}").json()
    assert status["pending_approval"] is True
    pending = client.get(f"/v1/audits/{audit_id}/approvals").json()["pending"]
    offered = {change["finding_id"]: change for change in pending["changes"]}
    assert offered, "no verified fix was offered"
    chosen = next(fid for fid, c in offered.items() if c["rule"] == "zero-grad-missing")
    assert "zero_grad" in offered[chosen]["diff"]
    assert client.get(f"/v1/audits/{audit_id}/fixes/{chosen}.diff").text == offered[chosen]["diff"]

    unknown = client.post(
        f"/v1/audits/{audit_id}/approvals",
        json={"decisions": [{"finding_id": "TD-000000000000", "approve": True}]},
    )
    assert unknown.status_code == 422
    decisions = [
        {"finding_id": fid, "approve": fid == chosen, "comment": "reviewed"} for fid in offered
    ]
    answer = client.post(f"/v1/audits/{audit_id}/approvals", json={"decisions": decisions})
    assert answer.status_code == 202, answer.text
    again = client.post(f"/v1/audits/{audit_id}/approvals", json={"decisions": decisions})
    assert again.status_code == 409

    done = wait_for(client, audit_id, {"done", "failed"})
    assert done["state"] == "done", done
    approvals = client.get(f"/v1/audits/{audit_id}/approvals").json()
    assert approvals["pending"] is None and approvals["answer"]["decisions"] == decisions

    patch = client.get(f"/v1/audits/{audit_id}/patch").text
    assert "zero_grad" in patch and patch.startswith("--- a/train.py")
    tree = tmp_path / "user"
    tree.mkdir()
    (tree / "train.py").write_text(TRAIN)
    subprocess.run(
        ["patch", "-p1", "--dry-run", "-i", "-"],
        input=patch,
        text=True,
        cwd=tree,
        check=True,
        capture_output=True,
    )
    subprocess.run(["git", "apply", "-"], input=patch, text=True, cwd=tree, check=True)
    assert "zero_grad" in (tree / "train.py").read_text()
    report = client.get(f"/v1/audits/{audit_id}/report").json()
    assert report["target"]["path"] == "."
    assert checkpoints_of(server, audit_id) > 0


def checkpoints_of(server: Server, audit_id: str) -> int:
    """The graph's checkpoints of the audit, in the server's own database kind."""
    if server.database_url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(server.database_url) as connection:
            row = connection.execute(
                "select count(*) from checkpoints where thread_id = %s", (audit_id,)
            ).fetchone()
    else:
        with sqlite3.connect(server.home / "checkpoints.sqlite") as connection:
            row = connection.execute(
                "select count(*) from checkpoints where thread_id = ?", (audit_id,)
            ).fetchone()
    return int(row[0]) if row else 0
