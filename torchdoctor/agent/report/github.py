"""GitHub Actions workflow commands: one annotation per open finding (`::error file=...::`).

Escaping follows the runner's own rules (actions/toolkit `command.ts`): in the message `%`,
CR and LF are percent-encoded; in a property value `:` and `,` are too, so a file name or a
title from the audited repository can neither end the command nor forge another one.
"""

from __future__ import annotations

from torchdoctor.agent.escape import strip_controls
from torchdoctor.agent.models import AuditReport, Finding, Severity
from torchdoctor.agent.report.paths import workdir_path

_COMMAND = {
    Severity.CRITICAL: "error",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "notice",
    Severity.INFO: "notice",
}


def escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation(report: AuditReport, finding: Finding) -> str:
    properties = {
        "file": workdir_path(report, finding),
        "line": str(finding.line),
        "endLine": str(finding.end_line),
        "title": f"{finding.rule} ({finding.severity.value}, point {finding.checkpoint})",
    }
    rendered = ",".join(f"{key}={escape_property(value)}" for key, value in properties.items())
    message = finding.evidence[0].message if finding.evidence else ""
    body = f"{finding.title}: {message}" if message and message != finding.title else finding.title
    body = strip_controls(body, keep_lines=True)  # the Actions log renders ANSI sequences
    return f"::{_COMMAND[finding.severity]} {rendered}::{escape_data(body)}"


def render_github(report: AuditReport) -> str:
    lines = [annotation(report, f) for f in report.findings if f.status.is_open]
    return "".join(line + "\n" for line in lines)
