"""Loss and gradient-norm curves of each run as small SVG files next to the markdown report.

A divergence or a spike is seen at a glance on a curve and missed in a column of numbers. The
charts are plain SVG (a polyline, axes, min/max labels): no plotting library, no fonts or
scripts, nothing from the audited code but numbers.
"""

from __future__ import annotations

from math import log10
from pathlib import Path

from pydantic import BaseModel

from torchdoctor.agent.models import AuditReport
from torchdoctor.agent.probing import RunSummary

WIDTH, HEIGHT, MARGIN = 480, 200, 44


class RunPlots(BaseModel):
    """Paths of one run's charts, relative to the report."""

    loss: str | None = None
    grad_norm: str | None = None


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def svg_curve(points: list[tuple[int, float]], title: str, *, log_scale: bool = False) -> str:
    """One series as an SVG line chart (log y-axis when the values span decades)."""
    steps = [s for s, _ in points]
    values = [log10(v) if log_scale else v for _, v in points]
    x0, x1 = min(steps), max(steps)
    y0, y1 = min(values), max(values)
    xspan, yspan = (x1 - x0) or 1, (y1 - y0) or 1.0
    inner_w, inner_h = WIDTH - 2 * MARGIN, HEIGHT - 2 * MARGIN

    def xy(step: int, value: float) -> str:
        x = MARGIN + (step - x0) / xspan * inner_w
        y = HEIGHT - MARGIN - (value - y0) / yspan * inner_h
        return f"{x:.1f},{y:.1f}"

    line = " ".join(xy(s, v) for s, v in zip(steps, values, strict=True))
    raw = [v for _, v in points]
    scale = " (log scale)" if log_scale else ""
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">',
            f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
            f'<text x="{MARGIN}" y="18" font-size="13">{title}{scale}</text>',
            f'<line x1="{MARGIN}" y1="{HEIGHT - MARGIN}" x2="{WIDTH - MARGIN}" '
            f'y2="{HEIGHT - MARGIN}" stroke="#555"/>',
            f'<line x1="{MARGIN}" y1="{MARGIN}" x2="{MARGIN}" y2="{HEIGHT - MARGIN}" '
            'stroke="#555"/>',
            f'<text x="4" y="{MARGIN + 4}">{_fmt(max(raw))}</text>',
            f'<text x="4" y="{HEIGHT - MARGIN}">{_fmt(min(raw))}</text>',
            f'<text x="{MARGIN}" y="{HEIGHT - MARGIN + 16}">step {x0}</text>',
            f'<text x="{WIDTH - MARGIN}" y="{HEIGHT - MARGIN + 16}" text-anchor="end">'
            f"step {x1}</text>",
            f'<polyline fill="none" stroke="#1f6fb4" stroke-width="1.6" points="{line}"/>',
            "</svg>",
            "",
        ]
    )


def spans_decades(points: list[tuple[int, float]]) -> bool:
    positive = [v for _, v in points if v > 0]
    return len(positive) == len(points) and max(positive) / min(positive) >= 100


def report_runs(report: AuditReport) -> list[RunSummary]:
    return [RunSummary.model_validate(run) for run in report.provenance.extra.get("runs", [])]


def write_run_plots(report: AuditReport, directory: Path, stem: str) -> dict[int, RunPlots]:
    """Writes `<stem>.run<i>.loss.svg` and `.grad-norm.svg` for each run with at least two
    points; returns their names by run index, for the markdown report to embed."""
    written: dict[int, RunPlots] = {}
    for index, run in enumerate(report_runs(report)):
        plots = RunPlots()
        for key, title in (("loss", "loss"), ("grad_norm", "gradient norm")):
            points = getattr(run.curves, key)
            if len(points) < 2:
                continue
            name = f"{stem}.run{index + 1}.{key.replace('_', '-')}.svg"
            svg = svg_curve(points, title, log_scale=spans_decades(points))
            (directory / name).write_text(svg, encoding="utf-8")
            setattr(plots, key, name)
        if plots.loss or plots.grad_norm:
            written[index] = plots
    return written
