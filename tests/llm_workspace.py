"""Test support for the LLM reasoner: point requests built from real files, as the graph does.

The static engine runs on real fixture files; its raw findings are split by their rule's
checklist point, which is what the audit graph hands a reasoner for each point.
"""

from __future__ import annotations

from pathlib import Path

from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.checks.registry import rules_by_id
from torchdoctor.agent.reasoning.base import PointRequest

FIXTURES = Path(__file__).parent / "fixtures" / "llm"


def point_requests(root: Path, lang: str = "en") -> dict[int, PointRequest]:
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py"))
    static = analyse_files([(f, (root / f).read_text(encoding="utf-8")) for f in files])
    rules = rules_by_id()
    requests = {}
    for point in range(1, 13):
        raw = [r for r in static.all_findings() if r.rule in rules and rules[r.rule].point == point]
        requests[point] = PointRequest(
            point=point,
            lang=lang,
            raw_findings=raw,
            rules_run=static.rules_run,
            applicable_rules=sorted(static.applicable_rules()),
            files=files,
        )
    return requests


def copy_fixture(tmp: Path, *names: str) -> Path:
    """A workspace holding copies of the named fixture files."""
    root = tmp / "workspace"
    root.mkdir(exist_ok=True)
    for name in names:
        (root / name).write_text((FIXTURES / name).read_text(encoding="utf-8"), encoding="utf-8")
    return root
