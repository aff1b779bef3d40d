"""Two API replicas on one PostgreSQL and one state folder (as the compose profile `cluster`
runs them), both sending audits to the real local Ray cluster: the replica that claimed an
audit is killed (kill -9, by PID) while the audit's sandbox run is on a Ray node; its Ray tasks
die with it, its lease runs out, and the other replica takes the audit over and completes it,
the run done once in the report and no finding lost or duplicated."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.server import Server, wait_for
from tests.api.test_api import BUGGY
from tests.cluster.conftest import GPU_STAND_IN
from tests.cluster.ray_cluster import QUIET_ENV, RayCluster
from tests.cluster.test_ray_executor import NAPPING, alive, findings_of, gone, wait_for_job
from tests.pg_server import create_database

pytestmark = pytest.mark.slow

REFERENCE = "napping_reference.py"


@pytest.fixture(scope="module")
def replicas(
    ray_cluster: RayCluster, postgres_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Server]]:
    database = create_database(postgres_url, f"td_{uuid.uuid4().hex[:12]}")
    shared = tmp_path_factory.mktemp("replicas-state")
    env = ray_cluster.env
    settings = {
        **QUIET_ENV,
        "TORCHDOCTOR_HOME": str(shared),  # the one state volume both replicas mount
        "TORCHDOCTOR_EXECUTOR": "ray",
        "TORCHDOCTOR_RAY_GPU_RESOURCE": next(iter(GPU_STAND_IN)),
        **{k: env[k] for k in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")},
    }
    servers = [
        Server(tmp_path_factory.mktemp(f"replica-{name}"), database, settings) for name in "ab"
    ]
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


def claimed_by(server: Server, audit_id: str) -> bool:
    """Whether this replica's log says it started the audit (its own log, in its own folder)."""
    for line in server.log().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry.get("message") == "started" and entry.get("audit_id") == audit_id:
            return True
    return False


def submission(marker: str) -> dict[str, Any]:
    return {
        "files": {"train.py": BUGGY, marker: NAPPING.format(seconds=6)},
        "options": {"offline": True, "run": [f"python {marker}"], "steps": 1},
    }


def places(client: httpx.Client, audit_id: str, marker: str) -> list[tuple[str, str, int]]:
    """Each finding's rule and place, the napping script's own name left out."""
    findings = client.get(f"/v1/audits/{audit_id}/findings").json()
    return sorted((f["rule"], f["file"].replace(marker, "NAP"), f["line"]) for f in findings)


def test_an_audit_survives_the_replica_that_ran_it(replicas: list[Server]) -> None:
    key = replicas[0].key("acme")
    client = replicas[0].client(key)
    reference = client.post("/v1/audits", json=submission(REFERENCE)).json()["id"]
    marker = f"napping_{uuid.uuid4().hex[:8]}.py"
    audit_id = client.post("/v1/audits", json=submission(marker)).json()["id"]
    first = wait_for_job(marker)
    owner = next(s for s in replicas if claimed_by(s, audit_id))
    survivor = next(s for s in replicas if s is not owner)
    assert not claimed_by(survivor, audit_id)

    owner.kill()
    assert gone(lambda: alive(first)), "the sandbox job outlived the replica that owned it"
    status = wait_for(survivor.client(key), audit_id, {"done", "failed"})
    assert status["state"] == "done", status
    assert claimed_by(survivor, audit_id), "the other replica never took the audit over"

    client = survivor.client(key)
    report = client.get(f"/v1/audits/{audit_id}/report").json()
    runs = report["provenance"]["extra"]["runs"]
    assert [run["command"] for run in runs] == [f"python {marker}"], "a run lost or duplicated"
    findings = findings_of(client, audit_id)
    assert len(findings) == len(set(findings)), "a finding was duplicated"
    assert wait_for(client, reference, {"done", "failed"})["state"] == "done"
    assert places(client, audit_id, marker) == places(client, reference, REFERENCE), "lost"
