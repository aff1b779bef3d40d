"""Reporters: they only render an `AuditReport`, they never compute."""

from __future__ import annotations

from typing import Literal

from torchdoctor.agent.models import AuditReport
from torchdoctor.agent.report.concise import render_concise
from torchdoctor.agent.report.github import render_github
from torchdoctor.agent.report.junit import render_junit
from torchdoctor.agent.report.markdown import render_markdown
from torchdoctor.agent.report.sarif import render_sarif

Format = Literal["json", "sarif", "markdown", "github", "junit", "concise"]


def render(report: AuditReport, fmt: Format, lang: str = "en") -> str:
    if fmt == "json":
        return report.model_dump_json(indent=2) + "\n"
    if fmt == "sarif":
        return render_sarif(report)
    if fmt == "github":
        return render_github(report)
    if fmt == "junit":
        return render_junit(report)
    if fmt == "concise":
        return render_concise(report)
    return render_markdown(report, lang)
