"""The audit graph's typed state: everything an audit knows, checkpointed after every node.

Nothing an audit needs lives on the side: the options it started with, the snapshot it read,
the user's ledger statuses, the instrumented runs and tool versions, the findings and coverage,
the fixes with their verdicts, the working copy (the audited files with the verified fixes the
gate lets through), the gate decisions, the approval and the report. A resumed audit continues
from exactly this.
"""

from __future__ import annotations

import hashlib
import json
import operator
from enum import StrEnum
from typing import Annotated, Literal, TypedDict, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from torchdoctor.agent.artifacts.models import Artifact
from torchdoctor.agent.config import AuditConfig
from torchdoctor.agent.fixes.models import ApplyResult, FixKind, SmokeRun
from torchdoctor.agent.ledger import UserStatus
from torchdoctor.agent.models import (
    AuditReport,
    CoverageEntry,
    Evidence,
    Finding,
    GateDecision,
    Hypothesis,
    InputNote,
    Severity,
    Status,
    Verification,
)
from torchdoctor.agent.options import AuditOptions
from torchdoctor.agent.probing import RunSummary
from torchdoctor.agent.reasoning.base import PointRequest


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Snapshot(_Model):
    """What ingest read: each audited file's sha256, so a resume can tell the code changed."""

    root: str
    kind: Literal["file", "folder"]
    files: dict[str, str] = Field(default_factory=dict, description="path -> sha256")


class PointEvidence(_Model):
    """Evidence from a peer linter or an instrumented run, for one checklist point."""

    point: int = Field(ge=1, le=12)
    evidence: Evidence


class FixRecord(_Model):
    """One proposed fix through its life: proposed, verified (or not), adopted into the working
    copy or waiting on the critical findings the gate names, approved or not."""

    finding_id: str
    phase: int
    rule: str
    origin: Literal["codemod", "llm"]
    kind: FixKind
    diff: str = Field(description="against the user's files, as the report and apply use it")
    state: Literal["pending", "verified", "failed"] = "pending"
    verification: list[Verification] = Field(default_factory=list)
    adopted: bool = Field(False, description="in the working copy later phases analyse")
    waiting_on: list[str] = Field(default_factory=list, description="blocking finding ids")
    seconds: float | None = Field(
        None, description="wall seconds its verification took (what the fix-time budget counts)"
    )


class ProposedChange(_Model):
    """A verified diff offered for approval (what the terminal, the API and the chat show)."""

    finding_id: str
    rule: str
    severity: Severity
    title: str
    file: str
    line: int
    diff: str


class ApprovalRequest(_Model):
    """The payload of the graph's `interrupt()` before the user's files are written."""

    audit_id: str
    target: str
    changes: list[ProposedChange]


class FixDecision(_Model):
    finding_id: str
    approve: bool
    comment: str = ""


class ApprovalAnswer(_Model):
    """The value an approval interrupt is resumed with (`Command(resume=...)`)."""

    decisions: list[FixDecision] = Field(default_factory=list)
    refused: str | None = Field(
        None, description="why nothing may be written (no terminal, quit): recorded, not an error"
    )

    def approved(self) -> set[str]:
        return {d.finding_id for d in self.decisions if d.approve}


class ApplyRecord(_Model):
    """What the approval led to: the answer, and what was written (or why nothing was)."""

    answer: ApprovalAnswer
    result: ApplyResult = Field(default_factory=ApplyResult)
    artifacts: list[str] = Field(default_factory=list, description="artifact files written")
    artifact_ids: list[str] = Field(default_factory=list, description="artifacts written")


ORIGINAL = "original"
"""The name of the user's files as they are (no fix in the working copy)."""


def copy_digest(working_copy: dict[str, str]) -> str:
    """Names a working copy (the baseline run and the analysis are made once per copy)."""
    if not working_copy:
        return ORIGINAL
    text = json.dumps(sorted(working_copy.items()), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


K = TypeVar("K")
V = TypeVar("V")


def merge_dict(left: dict[K, V], right: dict[K, V]) -> dict[K, V]:
    return {**left, **right}


def merge_findings(left: list[Finding], right: list[Finding]) -> list[Finding]:
    """Findings by id: a later update (a fix, a status) replaces the earlier one in place."""
    merged = {f.id: f for f in left}
    merged.update((f.id, f) for f in right)
    return list(merged.values())


def merge_hypotheses(left: list[Hypothesis], right: list[Hypothesis]) -> list[Hypothesis]:
    """Hypotheses by id (a resumed step that repeats one does not add it twice)."""
    merged = {h.id: h for h in left}
    merged.update((h.id, h) for h in right)
    return list(merged.values())


def merge_coverage(left: list[CoverageEntry], right: list[CoverageEntry]) -> list[CoverageEntry]:
    merged = {c.item: c for c in left}
    merged.update((c.item, c) for c in right)
    return list(merged.values())


def add_usage(left: dict[str, int], right: dict[str, int]) -> dict[str, int]:
    merged = dict(left)
    for key, value in right.items():
        merged[key] = merged.get(key, 0) + value
    return merged


class AuditState(TypedDict, total=False):
    audit_id: str
    started_at: str
    options: AuditOptions
    config: AuditConfig
    snapshot: Snapshot
    user_statuses: dict[str, UserStatus]
    ledger_problem: str
    """Why the ledger is neither read nor written ("" when it is)."""
    requests: Annotated[dict[int, PointRequest], merge_dict]
    analysed_copy: Annotated[dict[int, str], merge_dict]
    """phase -> digest of the working copy its points' requests were computed on."""
    extra_evidence: list[PointEvidence]
    runs: list[RunSummary]
    artifacts: list[Artifact]
    """What --artifacts generated (offered ones are written on approval)."""
    unanalysed: list[InputNote]
    """Files the static pass could not parse or finish: reported as not (fully) audited."""
    tools: Annotated[dict[str, str], merge_dict]
    findings: Annotated[list[Finding], merge_findings]
    hypotheses: Annotated[list[Hypothesis], merge_hypotheses]
    """A model's claims no tool backed: reported as unverified, never findings."""
    coverage: Annotated[list[CoverageEntry], merge_coverage]
    fixes: Annotated[dict[str, FixRecord], merge_dict]
    fixes_proposed: Annotated[list[int], operator.add]
    baselines: Annotated[dict[str, SmokeRun], merge_dict]
    """working-copy digest -> the seeded run of that copy (made once)."""
    fix_runs: Annotated[dict[str, SmokeRun], merge_dict]
    """`verify.run_key` -> the patched run of a verified fix or of a combination: a combined
    check of the same code and call reuses it (one seeded run per code, not two), and the
    unseeded pair a seeding fix is judged on (`run_key` + `verify.UNSEEDED`)."""
    working_copy: Annotated[dict[str, str], merge_dict]
    """path -> text, for the files the adopted fixes changed."""
    gates: Annotated[list[GateDecision], operator.add]
    notes: Annotated[list[str], operator.add]
    usage: Annotated[dict[str, int], add_usage]
    trace: Annotated[list[str], operator.add]
    report: AuditReport
    applied: ApplyRecord


class PointTask(TypedDict):
    """What one parallel point branch receives."""

    request: PointRequest
    user_statuses: dict[str, UserStatus]


STATE_ENUMS: tuple[type[StrEnum], ...] = (Severity, Status, FixKind)
"""Enumerations inside those models (a checkpoint rebuilds them by name too)."""
STATE_MODELS: tuple[type[BaseModel], ...] = (
    AuditOptions,
    AuditConfig,
    Snapshot,
    UserStatus,
    PointEvidence,
    PointRequest,
    RunSummary,
    InputNote,
    Finding,
    Hypothesis,
    CoverageEntry,
    FixRecord,
    SmokeRun,
    GateDecision,
    AuditReport,
    ApplyRecord,
    ApprovalAnswer,
    ApprovalRequest,
    Artifact,
)
"""The models a checkpoint may hold at its top level (the checkpointer's allow-list)."""
