"""One line per open finding, `path:line:col: rule message`, as ruff and compilers print them:
what terminals make clickable and editors' problem matchers read; in a notebook the line is
the cell's own, after it (`path.ipynb:cell 3:5:1:`, ruff's form). Sorted by file, line and
column as ruff sorts; file names and messages come from the audited code, so they are written
without control characters or escape sequences (a terminal would act on them)."""

from __future__ import annotations

import contextlib
import os
from pathlib import PurePath

from torchdoctor.agent.escape import one_line
from torchdoctor.agent.models import AuditReport, Finding


def finding_path(report: AuditReport, finding: Finding) -> str:
    """The finding's file as it opens from the working folder: relative to it when the file
    is under it, else as the audit named it."""
    if report.target.kind == "file":
        return report.target.path
    path = PurePath(report.target.path) / finding.file
    if path.is_absolute():
        with contextlib.suppress(ValueError):
            return path.relative_to(os.getcwd()).as_posix()
    return path.as_posix()


def _column(finding: Finding) -> int:
    return next((ev.column for ev in finding.evidence if ev.column is not None), 1)


def _message(finding: Finding) -> str:
    said = finding.evidence[0].message if finding.evidence else ""
    text = f"{finding.title}: {said}" if said and said != finding.title else finding.title
    return one_line(text)


def render_concise(report: AuditReport) -> str:
    open_findings = sorted(
        (f for f in report.findings if f.status.is_open),
        key=lambda f: (finding_path(report, f), f.line, _column(f), f.rule),
    )
    return "".join(
        f"{one_line(finding_path(report, f))}:{_line(f)}:{_column(f)}: {f.rule} "
        f"[{f.severity.value}] {_message(f)}\n"
        for f in open_findings
    )


def _line(finding: Finding) -> str:
    where = finding.cell
    return str(finding.line) if where is None else f"cell {where[0]}:{where[1]}"
