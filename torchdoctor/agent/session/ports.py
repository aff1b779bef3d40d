"""What a session needs from the outside, as narrow interfaces: an `AuditDriver` that runs
audits where the door runs them (in this process for the terminal, through the service's queue
for the API), and an `Answerer` for free-text questions (the LLM's tool loop)."""

from __future__ import annotations

from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from torchdoctor.agent.context import Progress
from torchdoctor.agent.models import AuditReport, Finding, Status
from torchdoctor.agent.options import AuditChoices
from torchdoctor.agent.session.models import Block, Message
from torchdoctor.agent.state import ApprovalAnswer, ApprovalRequest


class SessionError(ValueError):
    """The driver cannot do what was asked (one line, shown to the user)."""


class AuditView(BaseModel):
    """An audit as a session sees it: running, waiting on approval, or ended."""

    model_config = ConfigDict(extra="forbid")

    audit_id: str
    state: Literal["running", "waiting-approval", "done", "failed", "cancelled"]
    report: AuditReport | None = None
    pending: ApprovalRequest | None = None
    error: str | None = None
    refused: str | None = Field(None, description="why approved fixes were not written")

    @property
    def ended(self) -> bool:
        return self.state != "running"


class AuditDriver(Protocol):
    def start(self, choices: AuditChoices, progress: Progress | None) -> str:
        """Start an audit of the session's code; its id (it may still be running)."""
        ...

    def answer(self, audit_id: str, answer: ApprovalAnswer, progress: Progress | None) -> None:
        """Answer the audit's approval question (the graph resumes and writes what was
        approved)."""
        ...

    def view(self, audit_id: str) -> AuditView: ...

    def cancel(self, audit_id: str) -> None: ...

    def set_status(
        self,
        audit_id: str,
        report: AuditReport,
        finding: Finding,
        status: Status,
        reason: str,
        lang: str,
    ) -> AuditReport:
        """Record a user's decision in the ledger; the report with the finding updated."""
        ...

    def ledger(self, audit_id: str) -> str | None: ...


class Answerer(Protocol):
    def __call__(
        self, question: str, report: AuditReport, history: list[Message], lang: str
    ) -> list[Block] | None:
        """The answer to a free-text question, or None when no LLM is configured."""
        ...
