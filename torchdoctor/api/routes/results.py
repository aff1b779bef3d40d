"""What an audit produced: the report in three formats, the ledger, findings (and the user's
decisions on them), each fix's diff, and the approved fixes as one patch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import Response

from torchdoctor.agent.ledger import LEDGER_NAME
from torchdoctor.agent.models import AuditReport, Finding, Severity, Status
from torchdoctor.agent.report import render
from torchdoctor.agent.session.statuses import record_status
from torchdoctor.api.auth import Caller, StoreDep
from torchdoctor.api.models import FindingUpdate
from torchdoctor.api.patch import tree_diff
from torchdoctor.api.routes.common import ERRORS, audit_or_404, report_or_409

router = APIRouter(prefix="/v1/audits", tags=["results"], responses=ERRORS)

_MEDIA = {
    "json": "application/json",
    "sarif": "application/sarif+json",
    "markdown": "text/markdown",
}


@router.get(
    "/{audit_id}/report",
    summary="The report: json (schema v1), sarif or markdown",
    responses={200: {"content": {m: {} for m in _MEDIA.values()}, "description": "the report"}},
)
def get_report(
    audit_id: str,
    who: Caller,
    store: StoreDep,
    format: Annotated[str, Query(pattern="^(json|sarif|markdown)$")] = "json",
) -> Response:
    record = audit_or_404(store, audit_id, who)
    report = report_or_409(store, record)
    text = render(report, format, record.options.lang or "en")  # type: ignore[arg-type]
    return Response(text, media_type=_MEDIA[format])


@router.get(
    "/{audit_id}/ledger",
    summary="The audit's ISSUES.md",
    responses={200: {"content": {"text/markdown": {}}, "description": "ISSUES.md"}},
)
def get_ledger(audit_id: str, who: Caller, store: StoreDep) -> Response:
    record = audit_or_404(store, audit_id, who)
    path = Path(record.workdir) / "src" / LEDGER_NAME
    if not path.is_file():
        raise HTTPException(status.HTTP_409_CONFLICT, f"audit {audit_id} has no ledger yet")
    return Response(path.read_text(encoding="utf-8"), media_type="text/markdown")


@router.get("/{audit_id}/findings", response_model=list[Finding], summary="Findings, filtered")
def list_findings(
    audit_id: str,
    who: Caller,
    store: StoreDep,
    point: Annotated[int | None, Query(ge=1, le=12)] = None,
    severity: Severity | None = None,
    finding_status: Annotated[Status | None, Query(alias="status")] = None,
) -> list[Finding]:
    report = report_or_409(store, audit_or_404(store, audit_id, who))
    return [
        f
        for f in report.findings
        if (point is None or f.checkpoint == point)
        and (severity is None or f.severity == severity)
        and (finding_status is None or f.status == finding_status)
    ]


def _finding_or_404(report: AuditReport, finding_id: str) -> Finding:
    for finding in report.findings:
        if finding.id == finding_id:
            return finding
    raise HTTPException(status.HTTP_404_NOT_FOUND, f"no finding {finding_id} in this audit")


@router.patch(
    "/{audit_id}/findings/{finding_id}",
    response_model=Finding,
    summary="Mark a finding wont-fix or needs-human, with a reason (kept in the ledger)",
)
def update_finding(
    audit_id: str, finding_id: str, update: FindingUpdate, who: Caller, store: StoreDep
) -> Finding:
    record = audit_or_404(store, audit_id, who)
    report = report_or_409(store, record)
    finding = _finding_or_404(report, finding_id)
    updated = record_status(
        report,
        finding,
        update.as_status,
        update.reason,
        ledger=Path(record.workdir) / "src" / LEDGER_NAME,
        lang=record.options.lang or "en",
        source="api",
        via="the API",
    )
    store.replace_report(audit_id, updated.model_dump_json())
    store.add_event(audit_id, "finding", {"id": finding_id, "status": update.status})
    return _finding_or_404(updated, finding_id)


@router.get(
    "/{audit_id}/fixes/{finding_id}.diff",
    summary="The proposed fix of one finding, as a unified diff",
    responses={200: {"content": {"text/x-diff": {}}, "description": "a unified diff"}},
)
def get_fix(audit_id: str, finding_id: str, who: Caller, store: StoreDep) -> Response:
    report = report_or_409(store, audit_or_404(store, audit_id, who))
    finding = _finding_or_404(report, finding_id)
    if finding.fix is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"finding {finding_id} has no fix")
    return Response(finding.fix.diff, media_type="text/x-diff")


@router.get(
    "/{audit_id}/patch",
    summary="All approved fixes as one unified diff (apply with `git apply` or `patch -p1`)",
    responses={200: {"content": {"text/x-diff": {}}, "description": "a unified diff"}},
)
def get_patch(audit_id: str, who: Caller, store: StoreDep) -> Response:
    record = audit_or_404(store, audit_id, who)
    workdir = Path(record.workdir)
    return Response(tree_diff(workdir / "original", workdir / "src"), media_type="text/x-diff")
