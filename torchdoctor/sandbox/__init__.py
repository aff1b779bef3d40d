"""Where untrusted code runs: the `Sandbox` protocol and its `local` and `docker` backends.

Build a job and run it:

    from torchdoctor.sandbox import Job, Limits, get_sandbox
    result = get_sandbox().run(Job(workspace=path, command=["python", "train.py"],
                                   limits=Limits(wall_s=120, memory_mb=4096)))
    result.outcome, result.stdout, result.isolation.summary

Names are resolved lazily: `torchdoctor.sandbox.probes` runs inside the sandbox with only torch
and the standard library, so importing this package must not import pydantic or docker.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torchdoctor.sandbox.config import DockerConfig, LocalConfig, SandboxConfig, get_sandbox
    from torchdoctor.sandbox.doctor import DoctorReport, render_doctor, self_check
    from torchdoctor.sandbox.models import (
        CollectedFile,
        Isolation,
        Job,
        Limits,
        Outcome,
        ResourceUsage,
        RunResult,
    )
    from torchdoctor.sandbox.protocol import Sandbox
    from torchdoctor.sandbox.workspace import WorkspaceError, stage_workspace

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
"""Put on a job's PYTHONPATH to run `python -m torchdoctor.sandbox.probes` inside the sandbox."""

_EXPORTS = {
    "CollectedFile": "torchdoctor.sandbox.models",
    "Isolation": "torchdoctor.sandbox.models",
    "Job": "torchdoctor.sandbox.models",
    "Limits": "torchdoctor.sandbox.models",
    "Outcome": "torchdoctor.sandbox.models",
    "ResourceUsage": "torchdoctor.sandbox.models",
    "RunResult": "torchdoctor.sandbox.models",
    "Sandbox": "torchdoctor.sandbox.protocol",
    "LocalConfig": "torchdoctor.sandbox.config",
    "DockerConfig": "torchdoctor.sandbox.config",
    "SandboxConfig": "torchdoctor.sandbox.config",
    "get_sandbox": "torchdoctor.sandbox.config",
    "DoctorReport": "torchdoctor.sandbox.doctor",
    "self_check": "torchdoctor.sandbox.doctor",
    "render_doctor": "torchdoctor.sandbox.doctor",
    "WorkspaceError": "torchdoctor.sandbox.workspace",
    "stage_workspace": "torchdoctor.sandbox.workspace",
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
