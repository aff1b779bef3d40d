"""The API's data contract: what it accepts and what it answers (pydantic)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from torchdoctor.agent.audit import AuditChoices
from torchdoctor.agent.models import Severity, Status


class AuditState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING_APPROVAL = "waiting-approval"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def active(self) -> bool:
        """Counts against the tenant's cap: it holds (or waits for) a worker."""
        return self in (AuditState.QUEUED, AuditState.RUNNING)

    @property
    def final(self) -> bool:
        return self in (AuditState.DONE, AuditState.FAILED, AuditState.CANCELLED)


class Principal(BaseModel):
    """Who is calling: the key's id and its tenant."""

    key_id: str
    tenant: str


class AuditRecord(BaseModel):
    id: str
    tenant: str
    state: AuditState
    options: AuditChoices
    workdir: str
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    error: str | None = None


class AuditEvent(BaseModel):
    """One progress event; `id` is the SSE event id (increasing, resumable)."""

    id: int
    kind: str
    data: dict[str, Any]


class AuditProgressRecord(BaseModel):
    """What a status answer reads of an audit, read in one transaction (clients poll it)."""

    record: AuditRecord
    findings: int | None = Field(description="the report's findings, once there is a report")
    approval_requested: bool
    events: list[AuditEvent]


class SubmitFiles(BaseModel):
    """A JSON submission: the files inline, or a folder already on the server."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "files": {"train.py": "import torch\nmodel = torch.nn.Linear(4, 2)\n"},
                    "options": {"offline": True, "fix": True},
                },
                {"path": "/srv/repos/project", "options": {"select": ["all"]}},
            ]
        },
    )

    files: dict[str, str] | None = Field(
        None, description="relative path -> UTF-8 text of each file to audit"
    )
    path: str | None = Field(
        None, description="a folder on the server, under one of its allowed roots"
    )
    options: AuditChoices = Field(default_factory=AuditChoices)


class PointProgress(BaseModel):
    point: int
    done: bool
    findings: int = 0


class PhaseProgress(BaseModel):
    phase: int
    started: bool
    done: bool
    points: list[PointProgress]


class AuditStatus(BaseModel):
    """An audit as `GET /v1/audits/{id}` shows it."""

    id: str
    url: str
    state: AuditState
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    error: str | None
    phases: list[PhaseProgress]
    findings: int | None = Field(None, description="once the report exists")
    pending_approval: bool


class Accepted(BaseModel):
    id: str
    url: str
    state: AuditState


class FindingUpdate(BaseModel):
    """A user's decision on a finding; it is written to the audit's ISSUES.md."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"status": "wont-fix", "reason": "seeded elsewhere"}]},
    )

    status: Literal["wont-fix", "needs-human"]
    reason: str = Field(min_length=1, max_length=2000)

    @property
    def as_status(self) -> Status:
        return Status(self.status)


class FindingFilter(BaseModel):
    point: int | None = Field(None, ge=1, le=12)
    severity: Severity | None = None
    status: Status | None = None


class ProblemDetail(BaseModel):
    """Every error answer: one line that says why."""

    detail: str
