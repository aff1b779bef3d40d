"""The app's wiring without a server: CORS only when configured, settings from the
environment (a wrong one is a one-line error), the rate limiter's arithmetic, and the service
image running `serve`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import REPO
from tests.pg_server import free_port
from torchdoctor.api.app import create_app
from torchdoctor.api.auth import RateLimiter
from torchdoctor.api.settings import ApiSettings

PREFLIGHT = {
    "Origin": "https://review.example",
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "Authorization",
}


def _app(tmp_path: Path, **settings: object) -> TestClient:
    return TestClient(create_app(ApiSettings(home=tmp_path, **settings)))  # type: ignore[arg-type]


def test_cors_is_off_unless_configured(tmp_path: Path) -> None:
    closed = _app(tmp_path / "a").options("/v1/audits", headers=PREFLIGHT)
    assert "access-control-allow-origin" not in closed.headers
    opened = _app(tmp_path / "b", cors_origins=["https://review.example"])
    allowed = opened.options("/v1/audits", headers=PREFLIGHT)
    assert allowed.headers["access-control-allow-origin"] == "https://review.example"
    other = opened.options("/v1/audits", headers={**PREFLIGHT, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_settings_come_from_torchdoctor_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHDOCTOR_PORT", "9001")
    monkeypatch.setenv("TORCHDOCTOR_WORKERS", "3")
    monkeypatch.setenv("TORCHDOCTOR_ALLOWED_ROOTS", "/srv/a, /srv/b")
    monkeypatch.setenv("TORCHDOCTOR_CORS_ORIGINS", '["https://x.example"]')
    settings = ApiSettings()
    assert (settings.port, settings.workers) == (9001, 3)
    assert settings.allowed_roots == [Path("/srv/a"), Path("/srv/b")]
    assert settings.cors_origins == ["https://x.example"]
    assert settings.url == f"sqlite:///{settings.home / 'api.sqlite'}"


@pytest.mark.parametrize(
    ("command", "variables", "said"),
    [
        ("serve", {"TORCHDOCTOR_PORT": "abc"}, "TORCHDOCTOR_PORT: Input should be a valid integer"),
        ("serve", {"TORCHDOCTOR_AUDIT_WORKERS": "0"}, "TORCHDOCTOR_AUDIT_WORKERS: Input should be"),
        (
            "keys list",
            {"TORCHDOCTOR_ALLOWED_ROOTS": "[1"},
            "TORCHDOCTOR_ALLOWED_ROOTS: Value error",
        ),
        ("keys list", {"TORCHDOCTOR_DATABASE_URL": "nonsense://x"}, "the database (nonsense://x)"),
        (
            "serve",
            {"TORCHDOCTOR_DATABASE_URL": f"postgresql://u:hunter2@127.0.0.1:{free_port()}/db"},
            "the database (postgresql://u:***@127.0.0.1:",
        ),
    ],
)
def test_wrong_settings_are_a_one_line_error(
    tmp_path: Path, command: str, variables: dict[str, str], said: str
) -> None:
    env = {**os.environ, "TORCHDOCTOR_HOME": str(tmp_path), **variables}
    done = subprocess.run(
        [sys.executable, "-m", "torchdoctor", *command.split()],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: {said}") and done.stderr.count("\n") == 1, done.stderr
    assert "hunter2" not in done.stderr


def test_the_rate_limiter_counts_per_key_and_says_when_to_retry() -> None:
    limiter = RateLimiter(per_minute=3)
    assert [limiter.retry_after("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.retry_after("a") >= 1
    assert limiter.retry_after("b") == 0


def test_the_service_image_serves_with_a_healthcheck() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert 'CMD ["serve"]' in dockerfile and "/healthz" in dockerfile
    assert '.[llm,linters,docker,api,ray]"' in dockerfile
    compose = (REPO / "docker-compose.yml").read_text()
    assert "TORCHDOCTOR_DATABASE_URL: postgresql://" in compose and "@db:5432/" in compose
