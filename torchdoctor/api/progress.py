"""Per-phase and per-point progress, read from an audit's events (idempotent: a resumed
audit that repeats an event changes nothing)."""

from __future__ import annotations

from torchdoctor.agent.checklist import PHASES
from torchdoctor.api.models import AuditEvent, PhaseProgress, PointProgress


def progress_from(events: list[AuditEvent]) -> list[PhaseProgress]:
    started: set[int] = set()
    gated: set[int] = set()
    points: dict[int, int] = {}
    for event in events:
        number = event.data.get("phase")
        if event.kind == "phase" and isinstance(number, int):
            started.add(number)
        elif event.kind == "gate" and isinstance(number, int):
            gated.add(number)
        elif event.kind == "point" and isinstance(event.data.get("point"), int):
            points[int(event.data["point"])] = int(event.data.get("findings", 0) or 0)
    return [
        PhaseProgress(
            phase=phase.number,
            started=phase.number in started,
            done=phase.number in gated,
            points=[
                PointProgress(point=p, done=p in points, findings=points.get(p, 0))
                for p in phase.points
            ],
        )
        for phase in PHASES
    ]
