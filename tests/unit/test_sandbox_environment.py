"""The job's environment is built from an allow-list: the service's secrets never pass."""

from __future__ import annotations

from torchdoctor.sandbox.environment import job_environment

HOST = {
    "OPENAI_API_KEY": "sk-secret",
    "DATABASE_URL": "postgres://u:p@h/db",
    "AWS_SECRET_ACCESS_KEY": "x",
    "LANG": "C.UTF-8",
    "CUDA_VISIBLE_DEVICES": "0",
    "PATH": "/root/bin:/usr/bin",
    "HOME": "/root",
    "LD_PRELOAD": "/evil.so",
    "PYTHONPATH": "/service/src",
}


def _env(requested: dict[str, str] | None = None) -> dict[str, str]:
    return job_environment(
        HOST, requested or {}, home="/ws", path="/venv/bin:/usr/bin", tmpdir="/tmp"
    )


def test_only_allow_listed_host_variables_pass() -> None:
    env = _env()
    assert env["LANG"] == "C.UTF-8"
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
    for name in ("OPENAI_API_KEY", "DATABASE_URL", "AWS_SECRET_ACCESS_KEY", "LD_PRELOAD"):
        assert name not in env
    assert "PYTHONPATH" not in env


def test_the_sandbox_sets_home_path_and_tmp_itself() -> None:
    env = _env()
    assert env["HOME"] == "/ws"
    assert env["PATH"] == "/venv/bin:/usr/bin"
    assert env["TMPDIR"] == "/tmp"
    assert env["PYTHONNOUSERSITE"] == "1"


def test_job_variables_are_added_but_cannot_override_the_fixed_ones() -> None:
    env = _env({"PYTHONPATH": "/ws/src", "HOME": "/root", "SEED": "1"})
    assert env["PYTHONPATH"] == "/ws/src"
    assert env["SEED"] == "1"
    assert env["HOME"] == "/ws"
