"""What the LLM's tool loop works from and gives back, typed: the audit brief, the bounds, the
hooks a caller lends the tools, and the answer with its tool calls.

Kept apart from the loop itself (`reasoning.llm.tool_loop`), so the audit graph and the chat
session can speak of them without importing an HTTP client.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from torchdoctor.agent.models import AuditReport, Evidence, Finding, Fix, Hypothesis

StopReason = Literal["answered", "turns", "tool_calls", "tokens", "time", "budget", "unavailable"]


class ProbeOutcome(BaseModel):
    """One probes run for the tool loop: what the model reads, and the typed evidence a claim
    the model then makes can be backed by."""

    model_config = ConfigDict(extra="forbid")

    text: str
    evidence: list[Evidence] = Field(default_factory=list)


ProbeHook = Callable[[str, list[str]], ProbeOutcome]
"""Runs an audited script (and its arguments) under the probes harness in the sandbox."""
VerifyHook = Callable[[Finding, Fix], Fix]
"""Verifies a proposed fix by execution; returns it with its verification steps."""


class AuditBrief(BaseModel):
    """What the model is told about the audit: the target, its findings, coverage and files."""

    model_config = ConfigDict(extra="forbid")

    target: str
    findings: list[Finding] = Field(default_factory=list)
    coverage: dict[str, int] = Field(default_factory=dict, description="verdict -> item count")
    files: list[str] = Field(default_factory=list, description="audited files the tools may read")
    lang: str = "en"

    @classmethod
    def of_report(cls, report: AuditReport, files: Sequence[str] = (), lang: str = "en") -> Self:
        named = {ev.file for f in report.findings for ev in f.evidence if ev.file}
        named |= {f.file for f in report.findings}
        if report.target.kind == "file":
            named.add(report.target.path.rsplit("/", 1)[-1])
        return cls(
            target=report.target.path,
            findings=report.findings,
            coverage=dict(sorted(Counter(c.verdict for c in report.coverage).items())),
            files=sorted(named | set(files)),
            lang=lang,
        )


class LoopBounds(BaseModel):
    """How far one loop may go (the audit's token budget bounds every loop together)."""

    model_config = ConfigDict(extra="forbid")

    max_turns: int = Field(8, ge=1, description="model requests")
    max_tool_calls: int = Field(6, ge=0)
    max_tokens: int = Field(60_000, ge=1, description="prompt + completion tokens")
    max_seconds: float = Field(300.0, gt=0)


class ToolCallRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    result: str
    seconds: float = 0.0


class LoopAnswer(BaseModel):
    """The model's answer, what it did to reach it, and why the loop stopped."""

    model_config = ConfigDict(extra="forbid")

    text: str
    stopped: StopReason
    tool_calls: list[ToolCallRecord] = Field(default_factory=list)
    proposed_fixes: dict[str, Fix] = Field(default_factory=dict)
    """Finding id -> the model's patch; `verified` only when a verifier ran it and it passed."""
    findings: list[Finding] = Field(default_factory=list)
    """Problems the model reported that tool evidence backs (a rule hit, a probe result)."""
    hypotheses: list[Hypothesis] = Field(default_factory=list)
    """Problems the model reported that nothing backs: unverified, never findings."""
    notes: list[str] = Field(default_factory=list)
    usage: dict[str, int] = Field(default_factory=dict)

    @property
    def truncated(self) -> bool:
        return self.stopped != "answered"


@dataclass(frozen=True)
class ToolHooks:
    """What the caller lends the tools: a sandbox to run probes in, a verifier for patches."""

    run_probes: ProbeHook | None = None
    verify_fix: VerifyHook | None = None


def tool_summary(answer: LoopAnswer) -> str:
    """`read_file_window x2, propose_fix` (what the loop did, for a note)."""
    counts = Counter(call.name for call in answer.tool_calls)
    return ", ".join(f"{name} x{n}" if n > 1 else name for name, n in counts.items()) or "none"
