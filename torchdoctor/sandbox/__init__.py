"""Where untrusted code runs: the `Sandbox` protocol and its `local` and `docker` backends.

Build a job and run it:

    from sandbox import Job, Limits, get_sandbox
    result = get_sandbox().run(Job(workspace=path, command=["python", "train.py"],
                                   limits=Limits(wall_s=120, memory_mb=4096)))
    result.outcome, result.stdout, result.isolation.summary

Names are resolved lazily: `sandbox.probes` runs inside the sandbox with only torch and the
standard library, so importing this package must not import pydantic or docker.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox.config import DockerConfig, LocalConfig, SandboxConfig, get_sandbox
    from sandbox.doctor import DoctorReport, render_doctor, self_check
    from sandbox.models import (
        CollectedFile,
        Isolation,
        Job,
        Limits,
        Outcome,
        ResourceUsage,
        RunResult,
    )
    from sandbox.protocol import Sandbox
    from sandbox.workspace import WorkspaceError, stage_workspace

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
"""Put on a job's PYTHONPATH to run `python -m sandbox.probes` inside the sandbox."""

_EXPORTS = {
    "CollectedFile": "sandbox.models",
    "Isolation": "sandbox.models",
    "Job": "sandbox.models",
    "Limits": "sandbox.models",
    "Outcome": "sandbox.models",
    "ResourceUsage": "sandbox.models",
    "RunResult": "sandbox.models",
    "Sandbox": "sandbox.protocol",
    "LocalConfig": "sandbox.config",
    "DockerConfig": "sandbox.config",
    "SandboxConfig": "sandbox.config",
    "get_sandbox": "sandbox.config",
    "DoctorReport": "sandbox.doctor",
    "self_check": "sandbox.doctor",
    "render_doctor": "sandbox.doctor",
    "WorkspaceError": "sandbox.workspace",
    "stage_workspace": "sandbox.workspace",
}

__all__ = [
    "PACKAGE_ROOT",
    "CollectedFile",
    "DockerConfig",
    "DoctorReport",
    "Isolation",
    "Job",
    "Limits",
    "LocalConfig",
    "Outcome",
    "ResourceUsage",
    "RunResult",
    "Sandbox",
    "SandboxConfig",
    "WorkspaceError",
    "get_sandbox",
    "render_doctor",
    "self_check",
    "stage_workspace",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'sandbox' has no attribute {name!r}")
