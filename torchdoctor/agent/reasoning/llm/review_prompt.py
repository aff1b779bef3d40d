"""What one review request shows the model for the points it covers, each thing once.

Items are listed per point with the tools' verdict; findings already reported, other evidence
(de-duplicated across points) and code (the union of every point's windows, each line once) go
in delimited data blocks, after a boundary token derived from all of that untrusted text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torchdoctor.agent.checklist import items_of_point, phase_of_point, point_title
from torchdoctor.agent.models import Evidence, Finding
from torchdoctor.agent.reasoning.base import PointRequest, PointResult
from torchdoctor.agent.reasoning.llm.rendering import boundary_for
from torchdoctor.agent.reasoning.llm.windows import Selection, merge_windows

VERDICT_MARKS = {"pass": "pass", "fail": "fail", "not-checked": "?", "not-applicable": "n/a"}
"""How an item's verdict is shown (the prompt says '?' means the tools could not check it)."""
_MAX_MESSAGE = 120


@dataclass(frozen=True)
class PointView:
    """One point as the reasoner holds it: the graph's request and the offline result."""

    request: PointRequest
    base: PointResult

    @property
    def point(self) -> int:
        return self.request.point


@dataclass(frozen=True)
class ReviewData:
    """The rendered blocks' inputs, and the untrusted text they carry (everything in them that
    the audited repository or a tool could have written: the boundary is derived from it)."""

    reported: list[dict[str, Any]]
    evidence: list[dict[str, Any]]
    windows: list[dict[str, Any]]
    omitted: int
    untrusted: tuple[str, ...]

    @property
    def chars(self) -> int:
        return sum(len(text) for text in self.untrusted)


def review_data(views: Sequence[PointView], selections: Mapping[int, Selection]) -> ReviewData:
    findings = [(view.point, f) for view in views for f in view.base.findings]
    findings.sort(key=lambda pair: (pair[1].file, pair[1].line, pair[0], pair[1].rule))
    reported = [_reported(point, f) for point, f in findings]
    evidence = _evidence(views)
    windows = [
        {"file": w.file, "text": w.render()}
        for w in merge_windows([w for view in views for w in selections[view.point].windows])
    ]
    files = sorted({file for view in views for file in view.request.files})
    untrusted = (
        *(w["text"] for w in windows),
        *(f"{e['source']} {e['location']}: {e['message']}\n{e['excerpt']}" for e in evidence),
        *(f"{f['file']} {f['rule']}: {f['message']}" for f in reported),
        *files,
    )
    omitted = sum(selections[view.point].omitted_locations for view in views)
    return ReviewData(reported, evidence, windows, omitted, untrusted)


def review_context(views: Sequence[PointView], data: ReviewData) -> dict[str, Any]:
    """The `review` template's variables."""
    lang = views[0].request.lang
    by_file: dict[str, list[dict[str, Any]]] = {}
    for finding in data.reported:
        by_file.setdefault(finding["file"], []).append(finding)
    return {
        "points": [_point(view, lang) for view in views],
        "reported": [{"file": file, "findings": group} for file, group in by_file.items()],
        "evidence": data.evidence,
        "windows": data.windows,
        "omitted": data.omitted,
        "boundary": boundary_for(*data.untrusted),
    }


def _point(view: PointView, lang: str) -> dict[str, Any]:
    verdicts = {c.item: c.verdict for c in view.base.coverage}
    return {
        "number": view.point,
        "title": point_title(view.point, lang),
        "phase": phase_of_point(view.point),
        "items": [
            {
                "id": item.id,
                "title": item.title(lang),
                "verdict": VERDICT_MARKS[verdicts.get(item.id, "not-checked")],
            }
            for item in items_of_point(view.point)
        ],
    }


def _reported(point: int, finding: Finding) -> dict[str, Any]:
    message = finding.evidence[0].message if finding.evidence else finding.title
    return {
        "id": finding.id,
        "point": point,
        "rule": finding.rule,
        "file": finding.file,
        "line": finding.line,
        "message": _clip(" ".join(message.split())),
    }


def _clip(text: str) -> str:
    """At most `_MAX_MESSAGE` characters, cut at a word."""
    if len(text) <= _MAX_MESSAGE:
        return text
    return text[: _MAX_MESSAGE - 1].rsplit(" ", 1)[0] + "…"


def _evidence(views: Sequence[PointView]) -> list[dict[str, Any]]:
    """Each piece of evidence once, with the points it was gathered for."""
    seen: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for view in views:
        for ev in view.request.evidence:
            entry = {
                "source": ev.source,
                "location": _location(ev),
                "message": ev.message,
                "excerpt": ev.excerpt,
            }
            key = (entry["source"], entry["location"], entry["message"], entry["excerpt"])
            seen.setdefault(key, {**entry, "points": []})["points"].append(view.point)
    return list(seen.values())


def _location(ev: Evidence) -> str:
    if ev.file is None:
        return "project"
    return f"{ev.file}:{ev.line}" if ev.line is not None else ev.file
