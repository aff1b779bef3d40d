"""The audit graph: phase order, parallel points, the one gate after the user's statuses,
checkpoints per audit id, the progress total read off the graph."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from torchdoctor.agent.audit import AuditOptions, run_audit
from torchdoctor.agent.checklist import PHASES
from torchdoctor.agent.durable import checkpoints_path
from torchdoctor.agent.gate import gate_decision
from torchdoctor.agent.graph import progress_total
from torchdoctor.agent.models import Finding, Severity, Status

BROKEN = "def f(:\n    pass\n"
CLEAN = "import torch\n\n\ndef double(x: torch.Tensor) -> torch.Tensor:\n    return x * 2\n"


def _project(tmp_path: Path, source: str) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    (project / "broken.py").write_text(source)
    return project


def test_phases_run_in_order_with_points_in_parallel(tmp_path: Path) -> None:
    outcome = run_audit(AuditOptions(target=_project(tmp_path, CLEAN), write_ledger=False))
    trace = outcome.trace
    assert trace[:2] == ["ingest", "evidence"] and trace[-3:] == ["summarize", "approve", "report"]
    position = {step: index for index, step in enumerate(trace)}
    for phase in PHASES:
        for point in phase.points:
            assert (
                position[f"phase:{phase.number}"]
                < position[f"point:{point}"]
                < position[f"fix:{phase.number}"]
                < position[f"gate:{phase.number}"]
                < position[f"ledger:{phase.number}"]
            )
        if phase.number > 1:
            assert position[f"ledger:{phase.number - 1}"] < position[f"phase:{phase.number}"]
    assert len(outcome.report.coverage) == 50


def test_gate_blocks_later_phases_while_a_critical_phase_1_finding_is_open(tmp_path: Path) -> None:
    report = run_audit(AuditOptions(target=_project(tmp_path, BROKEN), write_ledger=False)).report
    gates = {g.after_phase: g for g in report.summary.gates}
    assert gates[1].blocked_phases == [2, 3, 4, 5]
    assert gates[1].open_critical
    assert gates[4].blocked_phases == [5]


def test_a_critical_finding_marked_wont_fix_in_the_ledger_blocks_nothing(tmp_path: Path) -> None:
    """The reproduced bug: the gate ran before the user's ledger statuses were applied."""
    project = _project(tmp_path, BROKEN)
    first = run_audit(AuditOptions(target=project)).report
    (critical,) = [f for f in first.findings if f.severity is Severity.CRITICAL]
    ledger = project / "ISSUES.md"
    text = ledger.read_text()
    entry = text.index(f"#### {critical.id}")
    status = text.index("- Status: open", entry)
    ledger.write_text(
        text[:status] + "- Status: wont-fix — generated on purpose" + text[status + 14 :]
    )
    second = run_audit(AuditOptions(target=project)).report
    (again,) = [f for f in second.findings if f.id == critical.id]
    assert again.status is Status.WONT_FIX
    assert all(g.blocked_phases == [] for g in second.summary.gates)


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


def test_checkpoints_are_written_per_audit_id_in_a_private_file(tmp_path: Path) -> None:
    """--fix makes an audit worth resuming (a static one is redone faster than resumed)."""
    project = _project(tmp_path, CLEAN)
    outcome = run_audit(AuditOptions(target=project, write_ledger=False, fix=True))
    path = checkpoints_path()
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    with sqlite3.connect(path) as db:
        threads = {row[0] for row in db.execute("select thread_id from checkpoints")}
        steps = db.execute(
            "select count(*) from checkpoints where thread_id = ?", (outcome.audit_id,)
        ).fetchone()[0]
    assert threads == {outcome.audit_id}
    assert steps >= len(outcome.trace) - 12  # one per node; the parallel points share a step


def test_the_progress_total_is_what_an_audit_reports(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    run_audit(AuditOptions(target=_project(tmp_path, CLEAN), write_ledger=False), events.append)
    assert sum(e.get("advance", 0) for e in events) == progress_total()
    assert next(e for e in events if e["event"] == "ingest")["total"] == progress_total()
