"""The correctness gate: a later phase's fixes wait until earlier phases' critical findings
are no longer open (phases 4-5, performance and style, wait on phases 1-3 in particular)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from torchdoctor.agent.models import Finding, Severity


class GateVerdict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allowed: list[str] = Field(default_factory=list, description="finding ids whose fix may go")
    blocked: dict[str, str] = Field(default_factory=dict, description="finding id -> why not")


def fix_gate(findings: list[Finding]) -> GateVerdict:
    """Which findings' fixes may be applied now, and why the others may not."""
    open_critical = [f for f in findings if f.severity is Severity.CRITICAL and f.status.is_open]
    verdict = GateVerdict()
    for finding in findings:
        waiting = [c for c in open_critical if c.phase < finding.phase]
        if waiting:
            ids = ", ".join(f"{c.id} ({c.rule}, phase {c.phase})" for c in waiting[:5])
            verdict.blocked[finding.id] = (
                f"phase {finding.phase} fixes wait on open critical findings of earlier phases: "
                f"{ids}"
            )
        else:
            verdict.allowed.append(finding.id)
    return verdict
