"""The launcher, run for real: limits set, privileges dropped, failures reported as 125."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from torchdoctor.sandbox.launch import ERROR_PREFIX, SANDBOX_ERROR_STATUS
from torchdoctor.sandbox.mechanisms import LAUNCHER

PRINT_STATE = (
    "import os, resource; "
    "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0], "
    "resource.getrlimit(resource.RLIMIT_CPU)[1], os.getcwd())"
)


def _launch(spec: dict[str, object], argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", "-S", str(LAUNCHER), json.dumps(spec), "--", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_limits_and_the_workspace_are_in_force_when_the_command_starts(tmp_path: Path) -> None:
    spec = {"workspace": str(tmp_path), "rlimits": {"NOFILE": 64, "CPU": 7}}
    done = _launch(spec, [sys.executable, "-c", PRINT_STATE])
    assert done.returncode == 0, done.stderr
    nofile, cpu_hard, cwd = done.stdout.split(" ", 2)
    assert nofile == "64"
    assert cpu_hard == "8"
    assert cwd.strip() == str(tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another uid needs root")
def test_the_command_runs_as_the_job_uid_without_groups() -> None:
    spec = {"workspace": "/", "uid": 54321, "gid": 54321}
    done = _launch(spec, ["/usr/bin/env", "id"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("uid=54321")
    assert "groups=54321" in done.stdout


def test_a_malformed_spec_is_a_launcher_error() -> None:
    done = subprocess.run(
        [sys.executable, str(LAUNCHER), "{not json", "--", "true"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == SANDBOX_ERROR_STATUS
    assert done.stderr.startswith(ERROR_PREFIX)


def test_a_missing_command_exits_127_like_a_shell(tmp_path: Path) -> None:
    done = _launch({"workspace": str(tmp_path)}, ["no-such-command-td"])
    assert done.returncode == 127
    assert ERROR_PREFIX not in done.stderr
