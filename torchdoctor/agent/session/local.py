"""The terminal's driver: audits run in this process on the user's own files, as `torchdoctor
audit --fix --apply` runs them; approved fixes are written to those files by the graph."""

from __future__ import annotations

from pathlib import Path

from torchdoctor.agent.audit import (
    AuditOutcome,
    ResumeError,
    new_audit_id,
    resume_audit,
    run_audit,
    run_config,
)
from torchdoctor.agent.config import ConfigError
from torchdoctor.agent.context import Progress
from torchdoctor.agent.ledger import default_ledger_path
from torchdoctor.agent.models import AuditReport, Finding, Status
from torchdoctor.agent.options import AuditChoices, AuditOptions
from torchdoctor.agent.session.ports import AuditView, SessionError
from torchdoctor.agent.session.statuses import record_status
from torchdoctor.agent.state import ApprovalAnswer, ApprovalRequest
from torchdoctor.agent.workspace import InputError
from torchdoctor.sandbox.core import SandboxUnavailable

FAILURES = (InputError, ConfigError, ResumeError, SandboxUnavailable)


class LocalDriver:
    def __init__(self, target: Path, sandbox: str | None = None) -> None:
        self.target = target
        self.sandbox = sandbox
        self._views: dict[str, AuditView] = {}

    def start(self, choices: AuditChoices, progress: Progress | None) -> str:
        audit_id = new_audit_id()
        options = AuditOptions(
            **choices.model_dump(),
            target=self.target,
            sandbox=self.sandbox,
            write_ledger=True,
            apply=choices.fix,  # verified fixes wait on the approval question
        )
        try:
            outcome = run_audit(options, progress, audit_id=audit_id)
        except FAILURES as err:
            self._views[audit_id] = AuditView(audit_id=audit_id, state="failed", error=str(err))
        else:
            self._views[audit_id] = _view(outcome)
        return audit_id

    def answer(self, audit_id: str, answer: ApprovalAnswer, progress: Progress | None) -> None:
        try:
            outcome = resume_audit(audit_id, progress, approver=lambda _question: answer)
        except FAILURES as err:
            self._views[audit_id] = AuditView(audit_id=audit_id, state="failed", error=str(err))
        else:
            self._views[audit_id] = _view(outcome)

    def view(self, audit_id: str) -> AuditView:
        if audit_id not in self._views:
            self._views[audit_id] = checkpointed(audit_id)
        return self._views[audit_id]

    def cancel(self, audit_id: str) -> None:
        """Audits run in the foreground here: Ctrl-C already stopped it."""
        self._views[audit_id] = AuditView(audit_id=audit_id, state="cancelled")

    def set_status(
        self,
        audit_id: str,
        report: AuditReport,
        finding: Finding,
        status: Status,
        reason: str,
        lang: str,
    ) -> AuditReport:
        return record_status(
            report,
            finding,
            status,
            reason,
            ledger=self.ledger_path,
            lang=lang,
            source="chat",
            via="a chat session",
        )

    def ledger(self, audit_id: str) -> str | None:
        path = self.ledger_path
        return path.read_text(encoding="utf-8") if path.is_file() else None

    @property
    def ledger_path(self) -> Path:
        return default_ledger_path(self.target)


def _view(outcome: AuditOutcome) -> AuditView:
    return AuditView(
        audit_id=outcome.audit_id,
        state="waiting-approval" if outcome.pending else "done",
        report=outcome.report,
        pending=outcome.pending,
        refused=outcome.refused,
    )


def checkpointed(audit_id: str) -> AuditView:
    """An audit this machine ran before, from its durable checkpoint (a session resumed after
    a restart, or `torchdoctor chat --audit ID`)."""
    from torchdoctor.agent.durable import open_store
    from torchdoctor.agent.graph import build_graph

    with open_store() as store:
        if store.entry(audit_id) is None:
            raise SessionError(f"no audit {audit_id!r} here (it may have been pruned)")
        snapshot = build_graph(store.saver).get_state(run_config(audit_id))
    report = snapshot.values.get("report")
    pending = next(
        (i.value for i in snapshot.interrupts if isinstance(i.value, ApprovalRequest)), None
    )
    if report is None:
        return AuditView(
            audit_id=audit_id,
            state="failed",
            error="it was interrupted before its report: `rerun`",
        )
    return AuditView(
        audit_id=audit_id,
        state="waiting-approval" if pending else "done",
        report=report,
        pending=pending,
    )


def stored_audit(audit_id: str) -> tuple[Path, AuditChoices]:
    """The folder or file a checkpointed audit audited, and the choices it ran with: a session
    on it keeps them, so `fix` verifies with the audit's own runs."""
    from torchdoctor.agent.durable import open_store
    from torchdoctor.agent.graph import build_graph

    with open_store() as store:
        entry = store.entry(audit_id)
        if entry is None:
            raise SessionError(f"no audit {audit_id!r} here (it may have been pruned)")
        values = build_graph(store.saver).get_state(run_config(audit_id)).values
    options = values.get("options")
    if options is None:
        return Path(entry.target), AuditChoices()
    return Path(entry.target), AuditChoices.model_validate(
        options.model_dump(include=set(AuditChoices.model_fields))
    )
