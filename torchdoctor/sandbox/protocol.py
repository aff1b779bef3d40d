"""The one seam through which torchdoctor runs code: every backend satisfies `Sandbox`."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torchdoctor.sandbox.models import Isolation, Job, RunResult


@runtime_checkable
class Sandbox(Protocol):
    """Runs a `Job` on a private copy of its workspace and reports what happened.

    `run` never raises for anything the job does (crash, hang, limit, hostile act) nor for a
    workspace it must refuse (an escaping symlink): those are typed outcomes. It raises only
    when the sandbox itself cannot be set up (no isolation mechanism works, no engine).
    """

    @property
    def isolation(self) -> Isolation: ...

    def run(self, job: Job) -> RunResult: ...

    async def arun(self, job: Job) -> RunResult: ...
