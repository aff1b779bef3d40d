"""What the review page reads besides the audit itself: the checklist's titles, a rule's
documentation, and each run's evidence drawn (loss and gradient-norm plots, data-flow map)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, status
from fastapi.responses import Response
from pydantic import BaseModel

from torchdoctor.agent.checklist import ITEMS, PHASES, POINTS
from torchdoctor.agent.checks.catalogue import CatalogueRule, catalogue
from torchdoctor.agent.probing import RunSummary
from torchdoctor.agent.report.dataflow import render_dataflow_mermaid
from torchdoctor.agent.report.plots import report_runs, spans_decades, svg_curve
from torchdoctor.api.auth import Caller, StoreDep
from torchdoctor.api.routes.common import ERRORS, audit_or_404, report_or_409

router = APIRouter(prefix="/v1", tags=["review"], responses=ERRORS)

Lang = Annotated[Literal["en", "fr"], Query(description="language of the titles")]


class ChecklistPhase(BaseModel):
    number: int
    title: str
    points: list[int]


class ChecklistPoint(BaseModel):
    number: int
    phase: int
    title: str


class ChecklistItem(BaseModel):
    id: str
    point: int
    title: str


class Checklist(BaseModel):
    """The 5 phases, 12 points and their items, titled in one language."""

    phases: list[ChecklistPhase]
    points: list[ChecklistPoint]
    items: list[ChecklistItem]


class RunView(BaseModel):
    """One instrumented run as the review page shows it."""

    index: int
    command: str
    outcome: str
    summary: str
    notes: list[str]
    plots: list[Literal["loss", "grad-norm"]]
    dataflow_mermaid: str


@router.get("/checklist", response_model=Checklist, summary="Phases, points and items")
def get_checklist(_: Caller, lang: Lang = "en") -> Checklist:
    fr = lang == "fr"
    return Checklist(
        phases=[
            ChecklistPhase(
                number=p.number, title=p.title_fr if fr else p.title_en, points=list(p.points)
            )
            for p in PHASES
        ],
        points=[
            ChecklistPoint(number=p.number, phase=p.phase, title=p.title_fr if fr else p.title_en)
            for p in POINTS
        ],
        items=[
            ChecklistItem(id=i.id, point=i.point, title=i.title_fr if fr else i.title_en)
            for i in ITEMS
        ],
    )


@router.get("/rules/{rule_id}", response_model=CatalogueRule, summary="A rule's documentation")
def get_rule(rule_id: str, _: Caller) -> CatalogueRule:
    """What the rule checks and why, as `torchdoctor rules ID` says it."""
    entry = catalogue().get(rule_id)
    if entry is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no rule {rule_id}")
    return entry


def _runs(store: StoreDep, audit_id: str, who: Caller) -> list[RunSummary]:
    return report_runs(report_or_409(store, audit_or_404(store, audit_id, who)))


def _plots(run: RunSummary) -> list[Literal["loss", "grad-norm"]]:
    kinds: list[Literal["loss", "grad-norm"]] = []
    if len(run.curves.loss) >= 2:
        kinds.append("loss")
    if len(run.curves.grad_norm) >= 2:
        kinds.append("grad-norm")
    return kinds


@router.get(
    "/audits/{audit_id}/runs", response_model=list[RunView], summary="The instrumented runs"
)
def list_runs(audit_id: str, who: Caller, store: StoreDep) -> list[RunView]:
    return [
        RunView(
            index=index,
            command=run.command,
            outcome=run.outcome,
            summary=run.summary,
            notes=run.notes,
            plots=_plots(run),
            dataflow_mermaid=render_dataflow_mermaid(run.dataflow),
        )
        for index, run in enumerate(_runs(store, audit_id, who))
    ]


@router.get(
    "/audits/{audit_id}/runs/{index}/{kind}.svg",
    summary="A run's loss or gradient-norm curve as SVG",
    responses={200: {"content": {"image/svg+xml": {}}, "description": "an SVG chart"}},
)
def get_run_plot(
    audit_id: str,
    index: Annotated[int, Path(ge=0)],
    kind: Literal["loss", "grad-norm"],
    who: Caller,
    store: StoreDep,
) -> Response:
    runs = _runs(store, audit_id, who)
    if index >= len(runs) or kind not in _plots(runs[index]):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no {kind} plot for run {index}")
    curves = runs[index].curves
    points = curves.loss if kind == "loss" else curves.grad_norm
    title = "loss" if kind == "loss" else "gradient norm"
    svg = svg_curve(points, title, log_scale=spans_decades(points))
    return Response(svg, media_type="image/svg+xml")
