"""The audit's data contract (pydantic): evidence, findings, coverage, the report (schema v1).

These models are the boundary between every component: the static engine, probes and linters
produce `Evidence`; reasoners turn evidence into `Finding`s and `CoverageEntry`s; reporters only
render an `AuditReport`.
"""

from __future__ import annotations

import hashlib
import re
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from torchdoctor.agent.artifacts.models import Artifact

SCHEMA_VERSION = 1


class Severity(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    INFO = "info"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {
    Severity.CRITICAL: 4,
    Severity.HIGH: 3,
    Severity.MEDIUM: 2,
    Severity.LOW: 1,
    Severity.INFO: 0,
}


class Status(StrEnum):
    OPEN = "open"
    FIXED = "fixed"
    VERIFIED = "verified"
    WONT_FIX = "wont-fix"
    NEEDS_HUMAN = "needs-human"

    @property
    def is_open(self) -> bool:
        return self in (Status.OPEN, Status.NEEDS_HUMAN)


Verdict = Literal["pass", "fail", "not-applicable", "not-checked"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


RELATED_ROLE = "related"
"""`Evidence.data["role"]` of a place a rule named beside its finding (where a leak starts, a
second optimizer): a location to show, not a measurement of the finding's own place."""


class Evidence(Strict):
    """What one tool or probe observed, with enough context to act on."""

    source: str = Field(description="tool or probe name, e.g. 'torchdoctor-static', 'ruff'")
    source_version: str = ""
    kind: Literal["static", "linter", "probe", "llm", "input"] = "static"
    message: str
    file: str | None = None
    line: int | None = None
    column: int | None = Field(None, ge=1, description="1-based column, where the tool says")
    excerpt: str = Field("", description="numbered source lines around the location")
    data: dict[str, Any] = Field(default_factory=dict)


class Verification(Strict):
    step: str
    ok: bool
    detail: str = ""


class Fix(Strict):
    diff: str
    verified: bool = False
    origin: Literal["codemod", "llm"] = "codemod"
    verification: list[Verification] = Field(default_factory=list)


class Finding(Strict):
    """One problem at one place. The JSON contract (schema v1) is exactly these fields."""

    id: str
    rule: str
    checkpoint: int = Field(ge=1, le=12)
    phase: int = Field(ge=1, le=5)
    severity: Severity
    title: str
    file: str
    line: int = Field(ge=1)
    end_line: int = Field(ge=1)
    evidence: list[Evidence]
    status: Status = Status.OPEN
    fix: Fix | None = None

    @property
    def cell(self) -> tuple[int, int] | None:
        """(cell, line in the cell) when the finding is in a notebook, else None."""
        data = self.evidence[0].data if self.evidence else {}
        cell, line = data.get("cell"), data.get("cell_line")
        return (cell, line) if isinstance(cell, int) and isinstance(line, int) else None

    @property
    def location(self) -> str:
        """Where to look, as a person reads it: `file:line`, or a notebook's cell and line."""
        where = self.cell
        if where is None:
            return f"{self.file}:{self.line}"
        return f"{self.file} cell {where[0]}, line {where[1]}"


class CoverageEntry(Strict):
    item: str
    verdict: Verdict
    how: str
    reason: str = ""


class InputNote(Strict):
    """A file that could not be audited (binary, too large, unreadable...), and why."""

    file: str
    reason: str


class GateDecision(Strict):
    after_phase: int
    open_critical: list[str] = Field(default_factory=list, description="finding ids")
    fixes_allowed_for_phases: list[int] = Field(default_factory=list)
    blocked_phases: list[int] = Field(default_factory=list)


class Summary(Strict):
    total: int
    by_severity: dict[str, int]
    by_point: dict[str, int]
    by_status: dict[str, int]
    coverage: dict[str, int]
    files_audited: int
    files_skipped: list[InputNote] = Field(default_factory=list)
    gates: list[GateDecision] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class ToolInfo(Strict):
    name: str = "torchdoctor"
    version: str


class Target(Strict):
    path: str
    kind: Literal["file", "folder"]


class Provenance(Strict):
    tools: dict[str, str] = Field(default_factory=dict)
    torch_version: str | None = None
    target_torch_version: str | None = None
    python_version: str
    reasoner: str
    isolation: str | None = None
    audit_id: str
    started_at: str
    duration_s: float
    extra: dict[str, Any] = Field(default_factory=dict)


class Hypothesis(Strict):
    """A problem a model asserted at a real place in the code that no tool backed (no rule
    hit, probe or sandbox result, tool call result on those lines): shown as unverified,
    never counted, gated, fixed or written to the ledger as a finding."""

    id: str
    rule: str
    checkpoint: int = Field(ge=1, le=12)
    severity: Severity = Field(description="as the model claimed it")
    title: str
    file: str
    line: int = Field(ge=1)
    end_line: int = Field(ge=1)
    explanation: str = ""
    source: str = Field(description="the model, e.g. 'llm:gpt-4o-mini'")


class AuditReport(Strict):
    schema_version: Literal[1] = 1
    tool: ToolInfo
    target: Target
    findings: list[Finding]
    coverage: list[CoverageEntry]
    summary: Summary
    provenance: Provenance
    artifacts: list[Artifact] = Field(
        default_factory=list, description="what --artifacts generated, and how each run went"
    )
    hypotheses: list[Hypothesis] = Field(
        default_factory=list, description="model claims no tool backed: unverified, not findings"
    )


_WS = re.compile(r"\s+")


def fingerprint(rule: str, file: str, code: str, occurrence: int = 0) -> str:
    """Stable finding id: rule, file and the whitespace-normalised flagged code, never the line."""
    normalised = _WS.sub(" ", code).strip()
    digest = hashlib.sha256(f"{rule}\0{file}\0{normalised}\0{occurrence}".encode()).hexdigest()
    return f"TD-{digest[:12]}"
