"""The sandbox's job/result contract: what a job may ask for, and how results serialise."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import TypeAdapter, ValidationError

from torchdoctor.sandbox.config import DockerConfig, LocalConfig, SandboxConfig
from torchdoctor.sandbox.models import (
    CollectedFile,
    Isolation,
    Job,
    Limits,
    Outcome,
    ResourceUsage,
    RunResult,
)


def _isolation(**changes: object) -> Isolation:
    base = Isolation(
        backend="local", mechanism="bwrap", user="uid 1", network="none", filesystem="ro"
    )
    return base.model_copy(update=changes)


def test_a_job_refuses_secret_looking_variables() -> None:
    with pytest.raises(ValidationError, match="OPENAI_API_KEY"):
        Job(workspace=Path("."), command=["python"], env={"OPENAI_API_KEY": "sk-1"})


def test_a_job_accepts_ordinary_variables() -> None:
    job = Job(workspace=Path("."), command=["python"], env={"OMP_NUM_THREADS": "1"})
    assert job.env == {"OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("pattern", ["/etc/passwd", "../x.txt", "out/../../y"])
def test_collect_patterns_must_stay_inside_the_workspace(pattern: str) -> None:
    with pytest.raises(ValidationError, match="inside the workspace"):
        Job(workspace=Path("."), command=["python"], collect=[pattern])


def test_a_job_needs_a_command() -> None:
    with pytest.raises(ValidationError):
        Job(workspace=Path("."), command=[])


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValidationError):
        Limits(wall_s=0)


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValidationError):
        Job.model_validate({"workspace": ".", "command": ["x"], "network": "host"})


def test_a_result_round_trips_through_json_with_binary_files() -> None:
    result = RunResult(
        outcome=Outcome.OK,
        exit_code=0,
        files=[CollectedFile(path="a.bin", size=3, content=b"abc")],
        usage=ResourceUsage(wall_s=0.5),
        isolation=_isolation(),
    )
    again = RunResult.model_validate_json(result.model_dump_json())
    assert again == result
    assert again.ok


def test_a_sandbox_error_result_says_why() -> None:
    result = RunResult.sandbox_error("argument list too long", _isolation())
    assert result.outcome is Outcome.SANDBOX_ERROR
    assert not result.ok
    assert result.reason == "argument list too long"


def test_a_degraded_isolation_says_so_in_its_summary() -> None:
    assert _isolation(degraded=True).summary.startswith("DEGRADED ")
    assert not _isolation().summary.startswith("DEGRADED")


def test_backend_configs_form_a_discriminated_union() -> None:
    adapter: TypeAdapter[LocalConfig | DockerConfig] = TypeAdapter(SandboxConfig)
    assert isinstance(adapter.validate_python({"type": "docker", "image": "x:1"}), DockerConfig)
    local = adapter.validate_python({"type": "local", "mechanism": "unshare"})
    assert isinstance(local, LocalConfig)
    assert local.mechanism == "unshare"
    with pytest.raises(ValidationError):
        adapter.validate_python({"type": "vm"})
