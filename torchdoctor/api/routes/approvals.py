"""Approval: the graph's interrupt before the audit's copy is written, seen and answered over
HTTP. The answer resumes the graph (`Command(resume=...)`) in the next worker."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, Field

from torchdoctor.agent.state import ApprovalAnswer, ApprovalRequest
from torchdoctor.api.auth import Caller, StoreDep
from torchdoctor.api.dispatcher import wake_dispatcher
from torchdoctor.api.models import Accepted, AuditState
from torchdoctor.api.routes.common import ERRORS, audit_or_404, audit_url

router = APIRouter(prefix="/v1/audits", tags=["approvals"], responses=ERRORS)


class Approvals(BaseModel):
    """The pending question (verified diffs, one per fix) and the answer given, if any."""

    state: AuditState
    pending: ApprovalRequest | None = Field(None, description="set while the audit waits")
    answer: ApprovalAnswer | None = Field(None, description="the last answer given")


ANSWER_EXAMPLE = {
    "decisions": [
        {"finding_id": "TD-0123456789ab", "approve": True, "comment": "checked the diff"},
        {"finding_id": "TD-ba9876543210", "approve": False, "comment": "we keep the print"},
    ]
}


@router.get("/{audit_id}/approvals", response_model=Approvals, summary="The pending question")
def get_approvals(audit_id: str, who: Caller, store: StoreDep) -> Approvals:
    record = audit_or_404(store, audit_id, who)
    request_text, answer_text = store.approval(audit_id, who.tenant)
    waiting = record.state is AuditState.WAITING_APPROVAL
    return Approvals(
        state=record.state,
        pending=(
            ApprovalRequest.model_validate_json(request_text) if waiting and request_text else None
        ),
        answer=ApprovalAnswer.model_validate_json(answer_text) if answer_text else None,
    )


@router.post(
    "/{audit_id}/approvals",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    summary="Approve or reject each verified fix (with a comment); the audit resumes",
    openapi_extra={"requestBody": {"content": {"application/json": {"example": ANSWER_EXAMPLE}}}},
)
def answer_approvals(
    audit_id: str, answer: ApprovalAnswer, request: Request, who: Caller, store: StoreDep
) -> Accepted:
    """Fixes not named are not written. `refused` (with a reason) declines them all."""
    record = audit_or_404(store, audit_id, who)
    request_text, _ = store.approval(audit_id, who.tenant)
    if record.state is not AuditState.WAITING_APPROVAL or request_text is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"audit {audit_id} is not waiting for approval ({record.state.value})",
        )
    offered = {c.finding_id for c in ApprovalRequest.model_validate_json(request_text).changes}
    unknown = sorted({d.finding_id for d in answer.decisions} - offered)
    if unknown:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"not offered for approval: {', '.join(unknown[:5])}",
        )
    if not store.answer_approval(audit_id, who.tenant, answer.model_dump_json()):
        raise HTTPException(status.HTTP_409_CONFLICT, f"audit {audit_id} was answered already")
    wake_dispatcher(request)
    approved = len(answer.approved())
    store.add_event(
        audit_id, "approval", {"approved": approved, "rejected": len(answer.decisions) - approved}
    )
    return Accepted(id=audit_id, url=audit_url(request, audit_id), state=AuditState.QUEUED)
