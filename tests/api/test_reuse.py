"""An audit of the same bytes with the same choices as one already made is finished from that
one's report and ledger, under its own id, without running again; repeats submitted together
wait for the first instead of each computing; anything else runs (real server, SQLite and
PostgreSQL)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.api.server import Server, events
from tests.conftest import EXAMPLES

SMALL = (EXAMPLES / "train_small.py").read_text(encoding="utf-8")
SERVER_SETTINGS = {"TORCHDOCTOR_RESULT_CACHE": "1", "TORCHDOCTOR_MAX_RUNNING_PER_TENANT": "8"}


@pytest.fixture(scope="module")
def client(server: Server) -> httpx.Client:
    return server.client(server.key("reuse"))


def audit(client: httpx.Client, files: dict[str, str], **options: Any) -> dict[str, Any]:
    """Submit, follow to the end, return the report."""
    answer = client.post("/v1/audits", json={"files": files, "options": options})
    assert answer.status_code == 202, answer.text
    audit_id = answer.json()["id"]
    states = [data["state"] for _id, kind, data in events(client, audit_id) if kind == "state"]
    assert states[-1] == "done", states
    report: dict[str, Any] = client.get(f"/v1/audits/{audit_id}/report?format=json").json()
    assert report["provenance"]["audit_id"] == audit_id
    return report


def findings(report: dict[str, Any]) -> list[tuple[str, int, str]]:
    return [(f["rule"], f["line"], f["id"]) for f in report["findings"]]


def test_a_repeat_is_finished_from_the_first_ones_report_and_ledger(client: httpx.Client) -> None:
    files = {"train.py": SMALL + "\n# first\n"}
    first = audit(client, files, offline=True)
    second = audit(client, files, offline=True)
    assert "reused" not in first["provenance"]["extra"]
    assert second["provenance"]["extra"]["reused"] is True
    assert findings(second) == findings(first) and findings(first)
    ledgers = [
        client.get(f"/v1/audits/{r['provenance']['audit_id']}/ledger").text for r in (first, second)
    ]
    assert ledgers[0] == ledgers[1] and "train.py" in ledgers[0]
    phases = [
        client.get(f"/v1/audits/{r['provenance']['audit_id']}").json()["phases"]
        for r in (first, second)
    ]
    assert phases[0] == phases[1] and all(p["done"] for p in phases[0])


def test_repeats_submitted_together_wait_for_one_computation(client: httpx.Client) -> None:
    files = {"train.py": SMALL + "\n# together\n"}
    with ThreadPoolExecutor(max_workers=5) as pool:
        reports = list(pool.map(lambda _i: audit(client, files, offline=True), range(5)))
    reused = [r for r in reports if r["provenance"]["extra"].get("reused")]
    assert len(reused) == 4
    assert {tuple(findings(r)) for r in reports} == {tuple(findings(reports[0]))}


def test_other_bytes_or_choices_run_again(client: httpx.Client) -> None:
    files = {"train.py": SMALL + "\n# choices\n"}
    audit(client, files, offline=True)
    changed = audit(client, {"train.py": SMALL + "\n# choices!\n"}, offline=True)
    selected = audit(client, files, offline=True, select=["all"])
    online = audit(client, files)  # not offline: an LLM, where configured, answers anew
    for report in (changed, selected, online):
        assert "reused" not in report["provenance"]["extra"]
