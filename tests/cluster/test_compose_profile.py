"""The compose profile `cluster`, as Docker Compose itself reads it (`docker-compose config`,
Debian's docker-compose): the services it brings up, how many of each, and that every API
replica and Ray node gets a configuration torchdoctor accepts, on the one database and the one
state volume, the replicas pointing at the head's own port.

Not brought up here: its images start `FROM python:3.11-slim` and `postgres:16`, which no local
image store holds and the tests never pull; the cluster they would form is the one
tests/cluster starts with `ray start` (same commands, same settings)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from torchdoctor.agent.cluster.config import ClusterConfig
from torchdoctor.api.settings import ApiSettings

REPO = Path(__file__).resolve().parents[2]
COMPOSE = shutil.which("docker-compose")
pytestmark = pytest.mark.skipif(COMPOSE is None, reason="docker-compose is not installed")
CLUSTER = {"db", "ray-head", "ray-worker", "api-cluster"}


def compose_config(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [str(COMPOSE), "--profile", "cluster", "config", *args],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "RAY_AUTH_TOKEN": "0" * 64},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    loaded: dict[str, Any] = yaml.safe_load(done.stdout)
    return loaded


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    found: dict[str, Any] = compose_config()["services"]
    return found


def image_home() -> str:
    """TORCHDOCTOR_HOME as the service image sets it (Dockerfile ENV)."""
    match = re.search(r"TORCHDOCTOR_HOME=(\S+)", (REPO / "Dockerfile").read_text())
    assert match is not None
    return match.group(1)


def test_the_profile_runs_a_head_two_workers_and_two_api_replicas(
    services: dict[str, Any],
) -> None:
    assert set(services) >= CLUSTER
    assert services["ray-worker"]["deploy"]["replicas"] == 2
    assert services["api-cluster"]["deploy"]["replicas"] == 2
    head = services["ray-head"]["entrypoint"]
    assert head[:3] == ["ray", "start", "--head"] and "--block" in head
    port = next(arg.split("=")[1] for arg in head if arg.startswith("--port="))
    worker = services["ray-worker"]["entrypoint"]
    assert f"--address=ray-head:{port}" in worker and "--block" in worker
    assert services["api-cluster"]["environment"]["RAY_ADDRESS"] == f"ray-head:{port}"
    for name in CLUSTER - {"db"}:
        assert services[name]["profiles"] == ["cluster"], name


def test_every_replica_and_node_shares_the_database_the_state_and_the_token(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes = ["ray-head", "ray-worker", "api-cluster"]
    urls = {services[name]["environment"]["TORCHDOCTOR_DATABASE_URL"] for name in nodes}
    database = services["db"]["environment"]
    assert urls == {
        f"postgresql://{database['POSTGRES_USER']}:{database['POSTGRES_PASSWORD']}"
        f"@db:5432/{database['POSTGRES_DB']}"
    }
    for name in nodes:
        volumes = {v.split(":")[0]: v.split(":")[1] for v in services[name]["volumes"]}
        assert volumes.get("home") == image_home(), name
        environment = services[name]["environment"]
        assert environment["RAY_AUTH_MODE"] == "token", name
        assert environment["RAY_AUTH_TOKEN"] == "0" * 64, name  # from the caller's shell

    replica = {k: str(v) for k, v in services["api-cluster"]["environment"].items()}
    assert ClusterConfig.from_env(replica).on_ray
    for key in [k for k in os.environ if k.startswith("TORCHDOCTOR_")]:
        monkeypatch.delenv(key)
    for key, value in replica.items():
        monkeypatch.setenv(key, value)
    settings = ApiSettings()
    assert settings.url.startswith("postgresql://") and settings.sandbox == "local"
    assert "db" in services["api-cluster"]["depends_on"], "a replica started before its database"
