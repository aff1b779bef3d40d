"""The commands around the service, as a user runs them: `keys create | list | revoke` and
`torchdoctor submit --wait` against a real server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.api.server import Server
from tests.api.test_api import BUGGY

pytestmark = [pytest.mark.parametrize("server", ["sqlite"], indirect=True), pytest.mark.slow]


def _cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "torchdoctor", *args],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_keys_are_shown_once_listed_without_secret_and_revocable(server: Server) -> None:
    created = _cli(server, "keys", "create", "--tenant", "team-a")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    key_id = key.split("_")[1]
    assert "not shown again" in created.stderr
    client = server.client(key)
    assert client.get("/v1/audits").status_code == 200
    listed = _cli(server, "keys", "list")
    assert f"{key_id}\tteam-a\tactive" in listed.stdout and key not in listed.stdout
    assert _cli(server, "keys", "revoke", key_id).returncode == 0
    assert client.get("/v1/audits").status_code == 401
    again = _cli(server, "keys", "revoke", key_id)
    assert again.returncode == 2 and again.stderr.count("\n") == 1


def test_submit_waits_and_downloads_report_and_patch(server: Server, tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "train.py").write_text(BUGGY)
    (project / ".gitignore").write_text("data/\n*.ckpt\n")
    (project / "data" / "secret.py").write_text("TOKEN = 'x'\n")
    (project / "model.ckpt").write_text("weights")
    key = server.key("team-b")
    report, patch = tmp_path / "report.json", tmp_path / "fixes.diff"
    done = _cli(
        server,
        "submit",
        str(project),
        "--server",
        server.url,
        "--key",
        key,
        "--wait",
        "--offline",
        "-f",
        "json",
        "-o",
        str(report),
        "--patch",
        str(patch),
    )
    assert done.returncode == 0, done.stderr
    assert "point 12:" in done.stderr and "state: done" in done.stderr
    findings = json.loads(report.read_text())["findings"]
    assert findings and {f["file"] for f in findings} == {"train.py"}
    assert patch.read_text() == ""
    audit_id = done.stderr.split("audit ", 1)[1].split()[0]
    ledger = server.client(key).get(f"/v1/audits/{audit_id}/ledger").text
    assert "secret.py" not in ledger and "model.ckpt" not in ledger

    refused = _cli(server, "submit", str(project), "--server", server.url, "--key", "td_x_y")
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith("401: unknown or revoked API key")
    assert httpx.get(f"{server.url}/healthz").status_code == 200
