"""The markdown report: the JSON report's content, laid out for a human reader.

Every text in it comes through an escaping filter (`torchdoctor.agent.escape`): file
names, evidence, run output and model text are untrusted.
"""

from __future__ import annotations

import re

from torchdoctor.agent.checklist import ITEMS_BY_ID, POINTS, point_title
from torchdoctor.agent.i18n import labels
from torchdoctor.agent.localise import localise
from torchdoctor.agent.markdown_env import templates
from torchdoctor.agent.models import AuditReport
from torchdoctor.agent.report.dataflow import render_dataflow_markdown, render_dataflow_mermaid
from torchdoctor.agent.report.plots import RunPlots, report_runs


def _run_views(report: AuditReport, plots: dict[int, RunPlots]) -> list[dict[str, object]]:
    return [
        {
            **run.model_dump(exclude={"dataflow", "curves"}),
            "dataflow_markdown": render_dataflow_markdown(run.dataflow),
            "dataflow_mermaid": render_dataflow_mermaid(run.dataflow),
            "plots": plots.get(index, RunPlots()),
        }
        for index, run in enumerate(report_runs(report))
    ]


def render_markdown(
    report: AuditReport, lang: str = "en", plots: dict[int, RunPlots] | None = None
) -> str:
    """`plots`: the run charts written next to the report (`write_run_plots`), to embed."""
    report = localise(report, lang)
    points = []
    for point in POINTS:
        findings = [f for f in report.findings if f.checkpoint == point.number]
        points.append(
            {"number": point.number, "title": point_title(point.number, lang), "findings": findings}
        )
    coverage = [
        {
            **c.model_dump(),
            "title": ITEMS_BY_ID[c.item].title(lang) if c.item in ITEMS_BY_ID else c.item,
        }
        for c in report.coverage
    ]
    text = (
        templates()
        .get_template("report.md.j2")
        .render(
            L=labels(lang),
            report=report,
            points=points,
            coverage=coverage,
            runs=_run_views(report, plots or {}),
        )
    )
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
