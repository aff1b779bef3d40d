"""The one correctness gate: a phase's fixes wait while a critical finding of an earlier phase
is open. Fed findings after the user's ledger statuses (a critical finding marked `wont-fix`
blocks nothing); the graph's gate nodes and `apply` both ask it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from torchdoctor.agent.checklist import PHASES
from torchdoctor.agent.models import Finding, GateDecision, Severity


class GateVerdict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allowed: list[str] = Field(default_factory=list, description="finding ids whose fix may go")
    blocked: dict[str, list[str]] = Field(
        default_factory=dict, description="finding id -> ids of the open critical findings"
    )
    reasons: dict[str, str] = Field(default_factory=dict, description="finding id -> why not")


def open_critical(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity is Severity.CRITICAL and f.status.is_open]


def blocking(findings: list[Finding], phase: int) -> list[Finding]:
    """The open critical findings that hold back the fixes of `phase`."""
    return [f for f in open_critical(findings) if f.phase < phase]


def fix_gate(findings: list[Finding]) -> GateVerdict:
    """Which findings' fixes may be applied now, and which findings they wait on."""
    verdict = GateVerdict()
    critical = open_critical(findings)  # once: a large audit has hundreds of findings
    for finding in findings:
        waiting = [c for c in critical if c.phase < finding.phase]
        if waiting:
            ids = ", ".join(f"{c.id} ({c.rule}, phase {c.phase})" for c in waiting[:5])
            verdict.blocked[finding.id] = [c.id for c in waiting]
            verdict.reasons[finding.id] = (
                f"phase {finding.phase} fixes wait on open critical findings of earlier phases: "
                f"{ids}"
            )
        else:
            verdict.allowed.append(finding.id)
    return verdict


def gate_decision(after_phase: int, findings: list[Finding]) -> GateDecision:
    """After `after_phase`: which later phases may apply fixes (the same rule as `fix_gate`)."""
    later = [phase.number for phase in PHASES if phase.number > after_phase]
    allowed = [q for q in later if not blocking(findings, q)]
    return GateDecision(
        after_phase=after_phase,
        open_critical=sorted(f.id for f in open_critical(findings) if f.phase <= after_phase),
        fixes_allowed_for_phases=allowed,
        blocked_phases=[q for q in later if q not in allowed],
    )
