"""A phase's investigation: the reasoner works on the phase's open findings that no codemod
fixes, with tools (read, search, re-check, run probes, propose a patch), in a bounded loop.

The patches it proposes become the findings' unverified LLM fixes; the phase's fix node then
verifies each like any other fix (one checkpointed step per fix), so nothing the model says is
taken as verified. Problems it reports become findings only when tool evidence backs them;
the others are unverified hypotheses. The loop's tool calls and why it stopped go into the
report's notes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.models import Finding, Hypothesis
from torchdoctor.agent.reasoning.base import Reasoner
from torchdoctor.agent.reasoning.inquiry import AuditBrief, ProbeHook, ToolHooks, tool_summary


@dataclass(frozen=True)
class Investigation:
    findings: list[Finding] = field(default_factory=list)
    """The targets that got a model's patch (unverified, `fix.origin == "llm"`), then the
    problems the model reported that tool evidence backs."""
    hypotheses: list[Hypothesis] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)


def targets_of(findings: list[Finding], phase: int) -> list[Finding]:
    """Open findings of `phase` with no fix and no codemod to make one."""
    return [
        f
        for f in sorted(findings, key=lambda f: (-f.severity.rank, f.id))
        if f.phase == phase and f.status.is_open and f.fix is None and codemod_for(f.rule) is None
    ]


def investigate(
    reasoner: Reasoner,
    phase: int,
    findings: list[Finding],
    brief: AuditBrief,
    run_probes: ProbeHook | None,
) -> Investigation:
    targets = targets_of(findings, phase)
    if not targets:
        return Investigation()
    answer = reasoner.investigate(phase, targets, brief, ToolHooks(run_probes=run_probes))
    if answer is None:
        return Investigation()
    patched = [
        f.model_copy(update={"fix": answer.proposed_fixes[f.id]})
        for f in targets
        if f.id in answer.proposed_fixes
    ]
    notes = [
        f"phase {phase}: {reasoner.name} worked on {len(targets)} finding(s) no codemod fixes "
        f"with {len(answer.tool_calls)} tool call(s) ({tool_summary(answer)}); "
        f"{len(patched)} patch(es) proposed for verification; {len(answer.findings)} "
        f"problem(s) reported with tool evidence, {len(answer.hypotheses)} without (kept as "
        f"unverified hypotheses); stopped: {answer.stopped}",
        *(f"phase {phase}: {note}" for note in answer.notes),
    ]
    usage = {f"investigate_{key}": value for key, value in answer.usage.items() if value}
    return Investigation(
        findings=[*patched, *answer.findings],
        hypotheses=answer.hypotheses,
        notes=notes,
        usage=usage,
    )
