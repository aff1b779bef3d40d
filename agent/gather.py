"""Evidence gathering for the audit's ingest step: one static pass, split by checklist point.

Every file is parsed once and every rule runs in that single pass (that is what makes the
static analysis fast); each point then receives its slice of findings and evidence.
"""

from __future__ import annotations

import re
from collections import defaultdict
from importlib import metadata

from agent.checklist import POINTS
from agent.checks.base import EngineConfig, RawFinding
from agent.checks.engine import StaticResult, analyse_files
from agent.checks.registry import rules_by_id
from agent.config import AuditConfig
from agent.models import Evidence
from agent.reasoning.base import PointRequest
from agent.workspace import Workspace

_VERSION = re.compile(r"^(\d+)\.(\d+)")


def parse_torch_version(text: str | None) -> tuple[int, int] | None:
    """'2.8' / '2.8.0+cu128' -> (2, 8); None or unparsable -> None."""
    if not text:
        return None
    match = _VERSION.match(text.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


def installed_torch_version() -> str | None:
    """The installed torch's version, read from package metadata (torch is not imported)."""
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def engine_config(config: AuditConfig) -> EngineConfig:
    target = config.torch_version or installed_torch_version()
    return EngineConfig(
        select=frozenset(config.select),
        ignore=frozenset(config.ignore),
        target_torch=parse_torch_version(target),
    )


def run_static(workspace: Workspace, config: AuditConfig) -> StaticResult:
    return analyse_files(workspace.pairs(), engine_config(config), manifests=workspace.manifests)


def split_by_point(
    workspace: Workspace,
    static: StaticResult,
    lang: str,
    extra_evidence: list[tuple[int, Evidence]] | None = None,
) -> dict[int, PointRequest]:
    """One request per checklist point, carrying that point's findings, rules and evidence."""
    rules = rules_by_id()
    raw_by_point: dict[int, list[RawFinding]] = defaultdict(list)
    for raw in static.all_findings():
        rule = rules.get(raw.rule)
        raw_by_point[rule.point if rule else 1].append(raw)
    evidence_by_point: dict[int, list[Evidence]] = defaultdict(list)
    for number, ev in extra_evidence or []:
        evidence_by_point[number].append(ev)
    applicable = static.applicable_rules()
    files = [f.path for f in workspace.files]
    notes = [f"{r.path}: {r.note}" for r in static.files if r.note]
    requests: dict[int, PointRequest] = {}
    for point in POINTS:
        run_here = [r for r in static.rules_run if r in rules and rules[r].point == point.number]
        requests[point.number] = PointRequest(
            point=point.number,
            lang=lang,
            raw_findings=raw_by_point[point.number],
            evidence=evidence_by_point[point.number],
            rules_run=run_here,
            applicable_rules=sorted(r for r in run_here if r in applicable),
            files=files,
            notes=notes if point.number == 1 else [],
        )
    return requests
