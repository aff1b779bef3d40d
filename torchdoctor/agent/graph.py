"""The audit state machine: ingest -> phase 1 -> gate -> ... -> phase 5 -> finalize.

Inside a phase, each checklist point is a parallel branch (`Send`); branches merge their
findings and coverage through list reducers. A gate after each phase records, for every later
phase, whether fixes may be applied there: only when no critical finding of an earlier phase is
still open. The graph is checkpointed (SQLite) per audit id, so an interrupted audit can be
inspected or resumed.
"""

from __future__ import annotations

import operator
import sqlite3
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langgraph.config import get_stream_writer
from langgraph.graph import END, START, StateGraph
from langgraph.types import Send

from torchdoctor.agent.checklist import PHASES
from torchdoctor.agent.home import private_file
from torchdoctor.agent.models import Finding, GateDecision, Severity
from torchdoctor.agent.reasoning.base import PointRequest, Reasoner

Gatherer = Callable[[], dict[int, PointRequest]]


def _merge_usage(left: dict[str, int], right: dict[str, int]) -> dict[str, int]:
    merged = dict(left)
    for key, value in right.items():
        merged[key] = merged.get(key, 0) + value
    return merged


class AuditState(TypedDict, total=False):
    audit_id: str
    requests: dict[str, dict[str, Any]]
    findings: Annotated[list[dict[str, Any]], operator.add]
    coverage: Annotated[list[dict[str, Any]], operator.add]
    gates: Annotated[list[dict[str, Any]], operator.add]
    notes: Annotated[list[str], operator.add]
    usage: Annotated[dict[str, int], _merge_usage]
    trace: Annotated[list[str], operator.add]


class PointTask(TypedDict):
    request: dict[str, Any]


def gate_decision(after_phase: int, findings: list[Finding]) -> GateDecision:
    """Fixes of phase q may be applied only when no critical finding of a phase < q is open."""
    open_critical = [f for f in findings if f.severity == Severity.CRITICAL and f.status.is_open]
    later = [phase.number for phase in PHASES if phase.number > after_phase]
    allowed = [q for q in later if not any(f.phase < q for f in open_critical)]
    return GateDecision(
        after_phase=after_phase,
        open_critical=sorted(f.id for f in open_critical if f.phase <= after_phase),
        fixes_allowed_for_phases=allowed,
        blocked_phases=[q for q in later if q not in allowed],
    )


@dataclass(frozen=True)
class PhaseStart:
    """Announces a phase, then fans its points out as parallel branches."""

    number: int
    points: tuple[int, ...] = ()

    def run(self, state: AuditState) -> dict[str, Any]:
        get_stream_writer()({"event": "phase", "phase": self.number})
        return {"trace": [f"phase:{self.number}"]}

    def fanout(self, state: AuditState) -> list[Send]:
        requests = state.get("requests", {})
        return [
            Send(f"points_{self.number}", PointTask(request=requests[str(point)]))
            for point in self.points
        ]


@dataclass(frozen=True)
class PhaseGate:
    """Records which later phases may apply fixes once this phase is done."""

    number: int

    def run(self, state: AuditState) -> dict[str, Any]:
        findings = [Finding.model_validate(f) for f in state.get("findings", [])]
        decision = gate_decision(self.number, findings)
        get_stream_writer()(
            {"event": "gate", "phase": self.number, "blocked": decision.blocked_phases}
        )
        return {"gates": [decision.model_dump(mode="json")], "trace": [f"gate:{self.number}"]}


def build_audit_graph(reasoner: Reasoner, gather: Gatherer) -> StateGraph[AuditState]:
    """The uncompiled graph; the caller compiles it with a checkpointer."""
    graph: StateGraph[AuditState] = StateGraph(AuditState)

    def ingest(state: AuditState) -> dict[str, Any]:
        get_stream_writer()({"event": "ingest"})
        requests = gather()
        prepare = getattr(reasoner, "prepare", None)
        if callable(prepare):
            prepare(requests)
        return {
            "requests": {
                str(point): req.model_dump(mode="json") for point, req in requests.items()
            },
            "trace": ["ingest"],
        }

    def point_node(state: PointTask) -> dict[str, Any]:
        request = PointRequest.model_validate(state["request"])
        result = reasoner.reason(request)
        get_stream_writer()(
            {"event": "point", "point": request.point, "findings": len(result.findings)}
        )
        return {
            "findings": [f.model_dump(mode="json") for f in result.findings],
            "coverage": [c.model_dump(mode="json") for c in result.coverage],
            "notes": result.notes,
            "usage": result.usage,
            "trace": [f"point:{request.point}"],
        }

    def finalize(state: AuditState) -> dict[str, Any]:
        get_stream_writer()({"event": "finalize"})
        return {"trace": ["finalize"]}

    graph.add_node("ingest", ingest)
    graph.add_edge(START, "ingest")
    previous = "ingest"
    for phase in PHASES:
        graph.add_node(f"phase_{phase.number}", PhaseStart(phase.number).run)
        graph.add_node(f"points_{phase.number}", point_node, input_schema=PointTask)
        graph.add_node(f"gate_{phase.number}", PhaseGate(phase.number).run)
        graph.add_edge(previous, f"phase_{phase.number}")
        graph.add_conditional_edges(
            f"phase_{phase.number}",
            PhaseStart(phase.number, phase.points).fanout,
            [f"points_{phase.number}"],
        )
        graph.add_edge(f"points_{phase.number}", f"gate_{phase.number}")
        previous = f"gate_{phase.number}"
    graph.add_node("finalize", finalize)
    graph.add_edge(previous, "finalize")
    graph.add_edge("finalize", END)
    return graph


@contextmanager
def audit_checkpointer(path: Path, durable: bool) -> Any:
    """SQLite on `path` when the audit is worth resuming after a crash (runs, fixes, an LLM);
    in memory otherwise: a static audit is redone faster than it is resumed."""
    if durable:
        with sqlite_checkpointer(path) as saver:
            yield saver
        return
    from langgraph.checkpoint.memory import InMemorySaver

    yield InMemorySaver()


@contextmanager
def sqlite_checkpointer(path: Path) -> Any:
    """A SQLite checkpointer on `path` (0600 in a 0700 folder: it holds source excerpts),
    closed on exit."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    private_file(path)
    connection = sqlite3.connect(str(path), check_same_thread=False)
    try:
        yield SqliteSaver(connection)
    finally:
        connection.close()
