"""The audit graph: phase order, parallel points, the correctness gate, checkpoints."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from torchdoctor.agent.checklist import PHASES
from torchdoctor.agent.checks.base import RawFinding
from torchdoctor.agent.graph import build_audit_graph, gate_decision, sqlite_checkpointer
from torchdoctor.agent.models import Finding, Severity, Status
from torchdoctor.agent.reasoning.base import PointRequest
from torchdoctor.agent.reasoning.offline import OfflineReasoner


def _requests(critical_in_point_1: bool) -> dict[int, PointRequest]:
    requests = {n: PointRequest(point=n) for n in range(1, 13)}
    if critical_in_point_1:
        requests[1] = PointRequest(
            point=1,
            raw_findings=[
                RawFinding(
                    rule="syntax-error",
                    file="a.py",
                    line=1,
                    end_line=1,
                    code="def f(:",
                    message="SyntaxError",
                    severity=Severity.CRITICAL,
                    excerpt="> 1 | def f(:",
                )
            ],
            rules_run=["syntax-error"],
        )
    return requests


def _run(tmp_path: Path, critical: bool) -> dict[str, object]:
    graph = build_audit_graph(OfflineReasoner(), lambda: _requests(critical))
    with sqlite_checkpointer(tmp_path / "cp.sqlite") as saver:
        app = graph.compile(checkpointer=saver)
        config = {"configurable": {"thread_id": "audit-1"}}
        app.invoke({"audit_id": "audit-1"}, config)
        return dict(app.get_state(config).values)


def test_phases_run_in_order_with_points_in_parallel(tmp_path: Path) -> None:
    state = _run(tmp_path, critical=False)
    trace: list[str] = state["trace"]  # type: ignore[assignment]
    assert trace[0] == "ingest" and trace[-1] == "finalize"
    position = {step: index for index, step in enumerate(trace)}
    for phase in PHASES:
        for point in phase.points:
            assert (
                position[f"phase:{phase.number}"]
                < position[f"point:{point}"]
                < position[f"gate:{phase.number}"]
            )
        if phase.number > 1:
            assert position[f"gate:{phase.number - 1}"] < position[f"phase:{phase.number}"]
    assert len(state["coverage"]) == 50  # type: ignore[arg-type]


def test_gate_blocks_later_phases_while_a_critical_phase_1_finding_is_open(tmp_path: Path) -> None:
    state = _run(tmp_path, critical=True)
    gates = {g["after_phase"]: g for g in state["gates"]}  # type: ignore[union-attr, index]
    assert gates[1]["blocked_phases"] == [2, 3, 4, 5]
    assert gates[1]["open_critical"]
    assert gates[4]["blocked_phases"] == [5]


def test_gate_allows_everything_without_critical_findings(tmp_path: Path) -> None:
    state = _run(tmp_path, critical=False)
    for gate in state["gates"]:  # type: ignore[union-attr]
        assert gate["blocked_phases"] == []


def test_gate_ignores_critical_findings_the_user_will_not_fix() -> None:
    finding = Finding(
        id="TD-000000000000",
        rule="syntax-error",
        checkpoint=1,
        phase=1,
        severity=Severity.CRITICAL,
        title="t",
        file="a.py",
        line=1,
        end_line=1,
        evidence=[],
        status=Status.WONT_FIX,
    )
    assert gate_decision(1, [finding]).blocked_phases == []


def test_checkpoints_are_written_per_audit_id(tmp_path: Path) -> None:
    _run(tmp_path, critical=False)
    with sqlite3.connect(tmp_path / "cp.sqlite") as db:
        threads = {row[0] for row in db.execute("select thread_id from checkpoints")}
    assert threads == {"audit-1"}
