"""The seam between evidence and judgement: what a reasoner receives and must return.

The offline reasoner and the LLM reasoner implement the same protocol, so the audit graph
never knows which one it is talking to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from torchdoctor.agent.checks.base import RawFinding
from torchdoctor.agent.models import CoverageEntry, Evidence, Finding, Hypothesis

if TYPE_CHECKING:
    from torchdoctor.agent.reasoning.inquiry import AuditBrief, LoopAnswer, ToolHooks


class PointRequest(BaseModel):
    """Everything gathered for one checklist point."""

    model_config = ConfigDict(extra="forbid")

    point: int
    lang: str = "en"
    raw_findings: list[RawFinding] = Field(default_factory=list)
    """Native static findings whose rule belongs to this point."""
    evidence: list[Evidence] = Field(default_factory=list)
    """Other evidence for this point: peer linters, probes (each names its checklist items
    in `data["items"]` when it speaks to specific items)."""
    rules_run: list[str] = Field(default_factory=list)
    applicable_rules: list[str] = Field(default_factory=list)
    files: list[str] = Field(default_factory=list)
    """Relative paths of the audited Python files (the reasoner may read windows of them)."""
    notes: list[str] = Field(default_factory=list)


class PointResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    point: int
    findings: list[Finding] = Field(default_factory=list)
    hypotheses: list[Hypothesis] = Field(default_factory=list)
    """A model's claims no tool backed (unverified; never findings)."""
    coverage: list[CoverageEntry] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    usage: dict[str, int] = Field(default_factory=dict)
    """Token counts or other costs the reasoner spent on this point."""


@runtime_checkable
class Reasoner(Protocol):
    """Judges one checklist point from its evidence."""

    @property
    def name(self) -> str: ...

    def prepare(self, requests: dict[int, PointRequest]) -> None:
        """Called once with every point's request before the first phase (and again when an
        audit resumes), so a reasoner can plan work across points (the LLM reasoner answers
        several points with one request). `reason` must still work for a point that was never
        prepared."""
        ...

    def reason(self, request: PointRequest) -> PointResult: ...

    def investigate(
        self, phase: int, targets: list[Finding], brief: AuditBrief, hooks: ToolHooks
    ) -> LoopAnswer | None:
        """Work on a phase's open findings that no codemod fixes (read, search, re-check, run
        probes, propose patches the audit then verifies); None: this reasoner does not."""
        ...

    def provenance(self) -> dict[str, Any]:
        """What the report's provenance records about this reasoner (empty: nothing)."""
        ...


class ReasonerBase:
    """Defaults for the optional parts of `Reasoner`: no planning, no investigation, nothing
    to record."""

    def prepare(self, requests: dict[int, PointRequest]) -> None:
        return None

    def investigate(
        self, phase: int, targets: list[Finding], brief: AuditBrief, hooks: ToolHooks
    ) -> LoopAnswer | None:
        return None

    def provenance(self) -> dict[str, Any]:
        return {}
