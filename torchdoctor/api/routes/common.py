"""What every audit route shares: the documented error answers and the tenant-scoped lookup."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request, status

from torchdoctor.agent.models import AuditReport
from torchdoctor.api.models import AuditRecord, Principal, ProblemDetail
from torchdoctor.api.store.store import Store


def _problem(description: str) -> dict[str, Any]:
    return {"model": ProblemDetail, "description": description}


ERRORS: dict[int | str, dict[str, Any]] = {
    400: _problem("the request cannot be accepted (one-line reason)"),
    401: _problem("no valid API key"),
    404: _problem("no such audit for this tenant"),
    409: _problem("the audit is not in a state that allows this"),
    413: _problem("the body is larger than the server accepts"),
    422: _problem("a field is invalid (one-line reason)"),
    429: _problem("rate limit or running-audit cap reached; see Retry-After"),
}


def no_such_audit(audit_id: str) -> HTTPException:
    """Also what another tenant's audit answers: its existence is not disclosed."""
    return HTTPException(status.HTTP_404_NOT_FOUND, f"no audit {audit_id}")


def audit_or_404(store: Store, audit_id: str, who: Principal) -> AuditRecord:
    record = store.get_audit(audit_id, who.tenant)
    if record is None:
        raise no_such_audit(audit_id)
    return record


def report_or_409(store: Store, record: AuditRecord) -> AuditReport:
    text = store.report(record.id, record.tenant)
    if text is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"audit {record.id} has no report yet ({record.state.value})"
        )
    return AuditReport.model_validate_json(text)


def audit_url(request: Request, audit_id: str) -> str:
    return str(request.url_for("get_audit", audit_id=audit_id))
