"""The findings a fix test starts from: the static engine's on one script, turned into
`Finding`s by the offline reasoner, point by point, as the audit graph does."""

from __future__ import annotations

from pathlib import Path

from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.checks.registry import rules_by_id
from torchdoctor.agent.models import Finding
from torchdoctor.agent.reasoning.base import PointRequest
from torchdoctor.agent.reasoning.offline import OfflineReasoner


def findings_of(root: Path, script: str = "train.py") -> list[Finding]:
    raw = analyse_files([(script, (root / script).read_text())], workers=1).all_findings()
    rules = rules_by_id()
    findings: list[Finding] = []
    for point in sorted({rules[r.rule].point for r in raw}):
        request = PointRequest(
            point=point, raw_findings=[r for r in raw if rules[r.rule].point == point]
        )
        findings += OfflineReasoner().reason(request).findings
    return findings
