"""The service's driver for review sessions: a session's audits go through the same queue,
workers and approval interrupt as any submitted audit; each new one starts from a copy of the
session's latest audited tree (approved fixes and ledger decisions included)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from torchdoctor.agent.context import Progress
from torchdoctor.agent.ledger import LEDGER_NAME
from torchdoctor.agent.models import AuditReport, Finding, Status
from torchdoctor.agent.options import AuditChoices
from torchdoctor.agent.session.engine import SessionEngine
from torchdoctor.agent.session.ports import AuditView, SessionError
from torchdoctor.agent.session.questions import llm_answerer
from torchdoctor.agent.session.statuses import record_status
from torchdoctor.agent.state import ApprovalAnswer, ApprovalRequest
from torchdoctor.api.intake import prepare_workdir
from torchdoctor.api.models import AuditRecord, AuditState
from torchdoctor.api.sessions import SessionService
from torchdoctor.api.settings import ApiSettings
from torchdoctor.api.store.sessions import SessionRecord, SessionStore
from torchdoctor.api.store.store import Store


class ApiDriver:
    def __init__(
        self, store: Store, settings: ApiSettings, tenant: str, base_audit: str | None
    ) -> None:
        self.store = store
        self.settings = settings
        self.tenant = tenant
        self.base_audit = base_audit

    def _audit(self, audit_id: str) -> AuditRecord:
        record = self.store.get_audit(audit_id, self.tenant)
        if record is None:
            raise SessionError(f"no audit {audit_id}")
        return record

    def start(self, choices: AuditChoices, progress: Progress | None) -> str:
        if self.base_audit is None:
            raise SessionError("this session has no audited code to start from")
        base = Path(self._audit(self.base_audit).workdir) / "src"
        cap = self.settings.max_running_per_tenant
        if self.store.count_active(self.tenant) >= cap:
            raise SessionError(f"tenant {self.tenant} already has {cap} audits running")
        audit_id = uuid.uuid4().hex
        workdir = self.settings.audits_dir / audit_id
        prepare_workdir(
            workdir, lambda src: shutil.copytree(base, src, symlinks=True, dirs_exist_ok=True)
        )
        self.store.create_audit(audit_id, self.tenant, choices, str(workdir))
        return audit_id

    def answer(self, audit_id: str, answer: ApprovalAnswer, progress: Progress | None) -> None:
        request_text, _ = self.store.approval(audit_id, self.tenant)
        offered = (
            {c.finding_id for c in ApprovalRequest.model_validate_json(request_text).changes}
            if request_text
            else set()
        )
        if not {d.finding_id for d in answer.decisions} <= offered:
            raise SessionError(f"audit {audit_id} is not waiting for these fixes")
        if not self.store.answer_approval(audit_id, self.tenant, answer.model_dump_json()):
            raise SessionError(f"audit {audit_id} is not waiting for approval")
        approved = len(answer.approved())
        self.store.add_event(
            audit_id,
            "approval",
            {"approved": approved, "rejected": len(answer.decisions) - approved},
        )

    def view(self, audit_id: str) -> AuditView:
        record = self._audit(audit_id)
        report_text = self.store.report(audit_id, self.tenant)
        report = AuditReport.model_validate_json(report_text) if report_text else None
        if record.state in (AuditState.QUEUED, AuditState.RUNNING):
            return AuditView(audit_id=audit_id, state="running")
        if record.state is AuditState.WAITING_APPROVAL:
            request_text, _ = self.store.approval(audit_id, self.tenant)
            pending = ApprovalRequest.model_validate_json(request_text) if request_text else None
            return AuditView(
                audit_id=audit_id, state="waiting-approval", report=report, pending=pending
            )
        _, answer_text = self.store.approval(audit_id, self.tenant)
        refused = ApprovalAnswer.model_validate_json(answer_text).refused if answer_text else None
        return AuditView(
            audit_id=audit_id,
            state=record.state.value,
            report=report,
            error=record.error,
            refused=refused,
        )

    def cancel(self, audit_id: str) -> None:
        self.store.cancel(audit_id, self.tenant)

    def set_status(
        self,
        audit_id: str,
        report: AuditReport,
        finding: Finding,
        status: Status,
        reason: str,
        lang: str,
    ) -> AuditReport:
        ledger = Path(self._audit(audit_id).workdir) / "src" / LEDGER_NAME
        updated = record_status(
            report,
            finding,
            status,
            reason,
            ledger=ledger,
            lang=lang,
            source="chat",
            via="a chat session",
        )
        self.store.replace_report(audit_id, updated.model_dump_json())
        self.store.add_event(audit_id, "finding", {"id": finding.id, "status": status.value})
        return updated

    def ledger(self, audit_id: str) -> str | None:
        path = Path(self._audit(audit_id).workdir) / "src" / LEDGER_NAME
        return path.read_text(encoding="utf-8") if path.is_file() else None


def session_service(store: Store, settings: ApiSettings) -> SessionService:
    """The service's sessions: each turn's engine drives audits through the queue; questions
    go to the LLM the server's environment configures (none: the session says so)."""

    def engine_for(record: SessionRecord) -> SessionEngine:
        state = record.state
        base = state.audit_id or (state.waiting.audit_id if state.waiting else None)
        driver = ApiDriver(store, settings, record.tenant, base)
        audit = store.get_audit(base, record.tenant) if base else None
        answerer = (
            llm_answerer(Path(audit.workdir) / "src", offline=state.choices.offline)
            if audit is not None
            else None
        )
        return SessionEngine(driver, answerer)

    return SessionService(SessionStore(store.engine), engine_for)
