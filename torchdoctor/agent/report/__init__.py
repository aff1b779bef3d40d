"""Reporters: they only render an `AuditReport`, they never compute. Each format's renderer is
imported when it is asked for (the markdown one brings Jinja2 and the run charts; a pre-commit
hook asks for the concise one)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from torchdoctor.agent.models import AuditReport

Format = Literal["json", "sarif", "markdown", "github", "junit", "concise"]


def render(report: AuditReport, fmt: Format, lang: str = "en") -> str:
    if fmt == "json":
        return report.model_dump_json(indent=2) + "\n"
    if fmt == "sarif":
        from torchdoctor.agent.report.sarif import render_sarif

        return render_sarif(report)
    if fmt == "github":
        from torchdoctor.agent.report.github import render_github

        return render_github(report)
    if fmt == "junit":
        from torchdoctor.agent.report.junit import render_junit

        return render_junit(report)
    if fmt == "concise":
        from torchdoctor.agent.report.concise import render_concise

        return render_concise(report)
    from torchdoctor.agent.report.markdown import render_markdown

    return render_markdown(report, lang)


def write_report(report: AuditReport, fmt: Format, lang: str, output: Path) -> None:
    """The report at `output`; a markdown report also gets its run charts beside it."""
    output.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "markdown":
        from torchdoctor.agent.report.markdown import render_markdown
        from torchdoctor.agent.report.plots import write_run_plots

        plots = write_run_plots(report, output.parent, output.stem)
        text = render_markdown(report, lang, plots)
    else:
        text = render(report, fmt, lang)
    output.write_text(text, encoding="utf-8")
