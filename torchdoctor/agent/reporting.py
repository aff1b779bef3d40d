"""The report an audit's state amounts to (partial after a phase, whole at the end)."""

from __future__ import annotations

import os
import platform
from collections import Counter
from datetime import UTC, datetime

from torchdoctor import __version__
from torchdoctor.agent.checklist import ITEMS
from torchdoctor.agent.context import AuditContext
from torchdoctor.agent.gather import installed_torch_version
from torchdoctor.agent.models import (
    AuditReport,
    CoverageEntry,
    Finding,
    GateDecision,
    InputNote,
    Provenance,
    Summary,
    Target,
    ToolInfo,
)
from torchdoctor.agent.probing import RunSummary
from torchdoctor.agent.redact import masked_finding
from torchdoctor.agent.state import AuditState
from torchdoctor.agent.workspace import Workspace


def build_report(state: AuditState, context: AuditContext, notes: list[str]) -> AuditReport:
    """The report of everything in `state` so far, with `notes` added to the state's."""
    workspace = context.workspace
    options = state["options"]
    config = state["config"]
    runs = state.get("runs", [])
    findings = sort_findings([masked_finding(f) for f in state.get("findings", [])])
    coverage = sorted(state.get("coverage", []), key=lambda c: _item_order(c.item))
    gates = _latest_gates(state.get("gates", []))
    started_at = state.get("started_at", "")
    reasoner = context.reasoner
    provenance = Provenance(
        tools={"torchdoctor": __version__, **state.get("tools", {})},
        torch_version=installed_torch_version(),
        target_torch_version=config.torch_version or installed_torch_version(),
        python_version=platform.python_version(),
        reasoner=reasoner.name,
        isolation=next((r.isolation for r in runs if r.isolation), None),
        audit_id=state["audit_id"],
        started_at=started_at,
        duration_s=_seconds_since(started_at),
        extra={
            "usage": state.get("usage", {}),
            "runs": [r.model_dump() for r in runs],
            **_llm_provenance(reasoner.provenance()),
        },
    )
    all_notes = [*state.get("notes", []), *run_notes(runs), *notes]
    return AuditReport(
        tool=ToolInfo(version=__version__),
        target=report_target(options.target, workspace),
        findings=findings,
        coverage=coverage,
        summary=summarize(
            findings, coverage, workspace, gates, all_notes, state.get("unanalysed", [])
        ),
        provenance=provenance,
        artifacts=state.get("artifacts", []),
        hypotheses=sorted(
            state.get("hypotheses", []), key=lambda h: (h.checkpoint, h.file, h.line)
        ),
    )


def report_target(named: object, workspace: Workspace) -> Target:
    """The audited path as the user named it; for several paths, or one file audited as a
    selection (pre-commit's `--force-exclude`), the folder the findings' paths are relative to
    (the name alone would make `train.py` + `train.py` read as `train.py/train.py`)."""
    if workspace.kind == "file":
        return Target(path=str(named), kind="file")
    if os.path.abspath(str(named)) == os.path.abspath(workspace.root):
        return Target(path=str(named), kind="folder")
    return Target(path=str(workspace.root), kind="folder")


def _llm_provenance(provenance: dict[str, object]) -> dict[str, object]:
    return {"llm": provenance} if provenance else {}


def _seconds_since(started_at: str) -> float:
    if not started_at:
        return 0.0
    elapsed = datetime.now(UTC) - datetime.fromisoformat(started_at)
    return round(elapsed.total_seconds(), 3)


def _latest_gates(gates: list[GateDecision]) -> list[GateDecision]:
    """One decision per phase: the last one taken (a resumed phase decides again)."""
    return sorted({g.after_phase: g for g in gates}.values(), key=lambda g: g.after_phase)


def run_notes(runs: list[RunSummary]) -> list[str]:
    """One line per instrumented run; a loud warning when isolation was only rlimits."""
    notes = [f"run `{r.command}`: {r.outcome} — {r.summary}" for r in runs]
    if any(r.isolation.startswith("DEGRADED") for r in runs):
        notes.insert(
            0,
            "WARNING: the sandbox ran user code with rlimits only (no namespaces): "
            "see `torchdoctor doctor`",
        )
    return notes


_ITEM_INDEX = {item.id: index for index, item in enumerate(ITEMS)}


def _item_order(item_id: str) -> int:
    return _ITEM_INDEX.get(item_id, len(_ITEM_INDEX))


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Phase order first (correctness first), then severity, then location; ids unique."""
    unique = {f.id: f for f in findings}
    return sorted(
        unique.values(),
        key=lambda f: (f.phase, f.checkpoint, -f.severity.rank, f.file, f.line, f.rule),
    )


def summarize(
    findings: list[Finding],
    coverage: list[CoverageEntry],
    workspace: Workspace,
    gates: list[GateDecision],
    notes: list[str],
    unanalysed: list[InputNote],
) -> Summary:
    return Summary(
        total=len(findings),
        by_severity=dict(Counter(f.severity.value for f in findings)),
        by_point={str(k): v for k, v in sorted(Counter(f.checkpoint for f in findings).items())},
        by_status=dict(Counter(f.status.value for f in findings)),
        coverage=dict(Counter(c.verdict for c in coverage)),
        files_audited=len(workspace.files),
        files_skipped=[*workspace.notes, *unanalysed],
        gates=gates,
        notes=notes,
    )
