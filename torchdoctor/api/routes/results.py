"""What an audit produced: the report in three formats, the ledger, findings (and the user's
decisions on them), each fix's diff, and the approved fixes as one patch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import Response

from torchdoctor.agent.ledger import LEDGER_NAME, Entry, Ledger, entry_meta
from torchdoctor.agent.models import AuditReport, Evidence, Finding, Severity, Status
from torchdoctor.agent.report import render
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
    note = f"status set through the API: {update.status} — {update.reason}"
    changed = finding.model_copy(
        update={
            "status": update.as_status,
            "evidence": [*finding.evidence, Evidence(source="api", kind="input", message=note)],
        }
    )
    report.findings = [changed if f.id == finding_id else f for f in report.findings]
    _write_ledger(
        Path(record.workdir) / "src" / LEDGER_NAME, report, changed, update, record.options.lang
    )
    store.replace_report(audit_id, report.model_dump_json())
    store.add_event(audit_id, "finding", {"id": finding_id, "status": update.status})
    return changed


def _write_ledger(
    path: Path, report: AuditReport, finding: Finding, update: FindingUpdate, lang: str | None
) -> None:
    """The decision and its reason land on the finding's `Status:` line in ISSUES.md."""
    ledger = Ledger.read(path)
    ledger.entries[finding.id] = Entry(
        finding.id, update.as_status, update.reason, entry_meta(finding)
    )
    ledger.merge(report, lang=lang or "en").write(path)


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
