"""A user's decision on a finding (wont-fix, needs-human, with a reason), written where every
door writes it: the finding's evidence and the `Status:` line of the audit's ISSUES.md."""

from __future__ import annotations

from pathlib import Path

from torchdoctor.agent.ledger import Entry, Ledger, entry_meta
from torchdoctor.agent.models import AuditReport, Evidence, Finding, Status


def record_status(
    report: AuditReport,
    finding: Finding,
    status: Status,
    reason: str,
    *,
    ledger: Path,
    lang: str,
    source: str,
    via: str,
) -> AuditReport:
    """The report with `finding` updated (an `input` evidence from `source` says who decided,
    through `via`); the ledger at `ledger` rewritten with the decision."""
    note = f"status set through {via}: {status.value} — {reason}"
    changed = finding.model_copy(
        update={
            "status": status,
            "evidence": [*finding.evidence, Evidence(source=source, kind="input", message=note)],
        }
    )
    updated = report.model_copy(
        update={"findings": [changed if f.id == finding.id else f for f in report.findings]}
    )
    book = Ledger.read(ledger)
    book.entries[finding.id] = Entry(finding.id, status, reason, entry_meta(finding))
    book.merge(updated, lang=lang).write(ledger)
    return updated
