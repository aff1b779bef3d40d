"""Several checklist points in one request: which points share one, and sending it once.

The audit graph reasons over the points of a phase in parallel and over the phases in order, one
point per `reason()` call. Its optional `prepare()` hook hands the reasoner every point's request
first, so the reasoner can plan batches: all points in one request when the code and evidence to
show fit the configured token budget, else consecutive phases packed while they fit (one request
per phase when none combine). The first `reason()` of a
batch sends the request (`Once`); the batch's other points, concurrent or later, read its
outcome. A batched answer is keyed by point; `route_sections` hands each claim to the point it
names when that point is in the batch, and each explanation to the point that reported the
finding it explains.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Generic, TypeVar

from torchdoctor.agent.checklist import PHASES
from torchdoctor.agent.reasoning.llm.schema import BatchAnswer, PointAnswer

T = TypeVar("T")


def plan_batches(
    points: Collection[int], fits: Callable[[tuple[int, ...]], bool]
) -> list[tuple[int, ...]]:
    """Consecutive phases packed into one batch while `fits` accepts it, in phase order.

    Everything fits: one batch. Nothing combines: one batch per phase (a phase is never split,
    even when it does not fit alone: its code windows are capped per point).
    """
    batches: list[tuple[int, ...]] = []
    current: tuple[int, ...] = ()
    for phase in PHASES:
        group = tuple(p for p in phase.points if p in points)
        if not group:
            continue
        if current and fits(current + group):
            current += group
            continue
        if current:
            batches.append(current)
        current = group
    return [*batches, current] if current else batches


class Once(Generic[T]):
    """A value computed by the first caller; concurrent callers wait for it, later ones read it.

    The computation must not raise: a batch's failure is part of its outcome, so every point of
    the batch can report it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value: list[T] = []

    def get(self, compute: Callable[[], T]) -> T:
        with self._lock:
            if not self._value:
                self._value.append(compute())
            return self._value[0]


def route_sections(
    answer: BatchAnswer, points: Sequence[int], owners: Mapping[str, int]
) -> dict[int, PointAnswer]:
    """Each point's share of a batched answer.

    A section for a point outside the batch (or a flat answer) counts as the first point's. A
    claim goes to the point it names when that point is in the batch, else it stays with its
    section (validation re-routes it); an explanation goes to the point whose finding it
    explains (`owners`: finding id -> point), else it stays with its section (and is dropped
    there as naming an unknown finding).
    """
    shares = {point: PointAnswer() for point in points}
    for section in answer.points:
        home = section.point if section.point in shares else points[0]
        for claim in section.findings:
            target = claim.checkpoint if claim.checkpoint in shares else home
            shares[target].findings.append(claim)
        for note in section.explanations:
            shares[owners.get(note.finding_id, home)].explanations.append(note)
        shares[home].not_checked.extend(section.not_checked)
    return shares
