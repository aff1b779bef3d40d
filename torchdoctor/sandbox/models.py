"""The sandbox's data contract: what a job asks for and what a run reports (pydantic).

A `Job` is everything a backend needs to run untrusted code once; a `RunResult` is everything
the caller may rely on afterwards, including which isolation was actually in force, so that a
report can say how much a smoke run or a fix verification can be trusted.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from torchdoctor.sandbox.outcome import Outcome as Outcome

SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|COOKIE|SESSION", re.IGNORECASE)


class Strict(BaseModel):
    # Built on first use: only an audit that runs code validates these, and a static audit
    # (a pre-commit hook) should not pay for building their validators at import.
    model_config = ConfigDict(extra="forbid", defer_build=True)


class Limits(Strict):
    """Resource ceilings for one job; every backend enforces all of them."""

    wall_s: float = Field(60.0, gt=0, description="wall-clock time before the job is killed")
    cpu_s: int = Field(60, gt=0, description="CPU seconds per process (RLIMIT_CPU)")
    memory_mb: int = Field(2048, gt=0, description="resident memory of the whole job")
    processes: int = Field(
        512, gt=0, description="processes and threads of the job's user (torch starts many)"
    )
    file_size_mb: int = Field(256, gt=0, description="largest single file (RLIMIT_FSIZE)")
    disk_mb: int = Field(512, gt=0, description="total bytes written to the workspace and /tmp")
    max_files: int = Field(100_000, gt=0, description="files and folders in the workspace")
    open_files: int = Field(1024, gt=0, description="file descriptors per process")
    output_bytes: int = Field(1_000_000, gt=0, description="stdout + stderr before the kill")
    collect_bytes: int = Field(1_000_000, gt=0, description="largest collected file content")


class Job(Strict):
    """One execution of untrusted code.

    `workspace` is a folder (or a single file) that the sandbox copies into a fresh private
    directory before running; the original is never written to. What runs, with that copy as
    its working directory: either `command` as is, or a Python `module` with `args`, which
    each backend runs with its own interpreter and import path (the project's on this host, the
    image's in a container). `collect` names workspace-relative files (glob patterns allowed)
    whose contents come back in the result. `cache` is the one folder outside the copy that the
    job may write, and the only one that outlives it.
    """

    workspace: Path
    command: list[str] = Field(default_factory=list)
    module: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    limits: Limits = Field(default_factory=Limits)
    collect: list[str] = Field(default_factory=list)
    gpu: bool = False
    cache: Path | None = Field(
        None,
        description="a host folder the job may write at its own path, kept across one audit's "
        "jobs (compiler caches, `shared_cache`); the job's environment points at it",
    )

    @field_validator("cache")
    @classmethod
    def _absolute_cache(cls, cache: Path | None) -> Path | None:
        if cache is not None and not cache.is_absolute():
            raise ValueError(f"the cache folder must be an absolute path: {cache}")
        return cache

    @field_validator("env")
    @classmethod
    def _no_secrets(cls, env: dict[str, str]) -> dict[str, str]:
        leaked = sorted(name for name in env if SECRET_NAME.search(name))
        if leaked:
            raise ValueError(f"secret-looking variables may not be passed to a job: {leaked}")
        return env

    @model_validator(mode="after")
    def _one_thing_to_run(self) -> Job:
        if bool(self.command) == (self.module is not None):
            raise ValueError("a job runs either a command or a module (with args), not both")
        if self.args and self.module is None:
            raise ValueError("args go with a module; a command carries its own")
        return self

    def argv(self, python: str) -> list[str]:
        """The command line, a module job run by `python` (the backend's interpreter)."""
        if self.module is None:
            return list(self.command)
        return [python, "-m", self.module, *self.args]

    @field_validator("collect")
    @classmethod
    def _relative_patterns(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            if pattern.startswith("/") or ".." in Path(pattern).parts:
                raise ValueError(f"collect pattern must stay inside the workspace: {pattern!r}")
        return patterns


class Isolation(Strict):
    """What actually confined a job, as found by probing the host, not as configured."""

    backend: str
    mechanism: str = Field(description="bwrap | unshare | rlimits | docker")
    namespaces: list[str] = Field(default_factory=list)
    user: str
    rlimits: dict[str, int] = Field(default_factory=dict)
    network: str = Field(description="none | host")
    filesystem: str
    gpu: bool = False
    degraded: bool = False
    warnings: list[str] = Field(default_factory=list)
    limits_held: list[str] = Field(
        default_factory=list,
        description="how memory, processes and disk were held (kernel or watch)",
    )

    @property
    def summary(self) -> str:
        ns = ",".join(self.namespaces) or "no namespaces"
        text = f"{self.backend}/{self.mechanism} ({ns}; user {self.user}; network {self.network})"
        return f"DEGRADED {text}" if self.degraded else text


class CollectedFile(Strict):
    path: str
    size: int
    content: bytes
    truncated: bool = False


class ResourceUsage(Strict):
    wall_s: float
    cpu_s: float | None = Field(None, description="user + system CPU of all the job's processes")
    peak_memory_mb: float | None = Field(None, description="peak resident memory of the job")


class RunResult(Strict):
    outcome: Outcome
    exit_code: int | None = Field(None, description="None when the job ended by a signal")
    signal: int | None = None
    reason: str = ""
    stdout: str = ""
    stderr: str = ""
    output_truncated: bool = False
    files: list[CollectedFile] = Field(default_factory=list)
    usage: ResourceUsage
    isolation: Isolation

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.OK

    @classmethod
    def sandbox_error(cls, reason: str, isolation: Isolation) -> RunResult:
        """The result of a job the sandbox could not start (the job itself never ran)."""
        return cls(
            outcome=Outcome.SANDBOX_ERROR,
            reason=reason,
            usage=ResourceUsage(wall_s=0.0),
            isolation=isolation,
        )
