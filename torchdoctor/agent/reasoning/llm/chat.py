"""One question-and-answer turn about an audit, with tools, for review sessions.

The model may read file windows, re-run the static checks on a file, run a probe (when the
session has a sandbox) and propose a fix (a unified diff recorded as an unverified `Fix`).
Tool calls per turn are bounded; at the bound the turn stops and says so. Tool results are
untrusted data, delimited like the code in review prompts.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.models import AuditReport, Fix
from torchdoctor.agent.reasoning.llm.budget import BudgetExhausted
from torchdoctor.agent.reasoning.llm.client import LLMUnavailable, Usage
from torchdoctor.agent.reasoning.llm.diffs import DiffRejected, check_diff
from torchdoctor.agent.reasoning.llm.reasoner import LLMReasoner
from torchdoctor.agent.reasoning.llm.rendering import boundary_for, render
from torchdoctor.agent.reasoning.llm.validation import numbered

ProbeRunner = Callable[[str, dict[str, Any]], str]
"""Runs a named sandbox probe with arguments and returns its output as text."""

_MAX_WINDOW = 120
_MAX_RESULT_CHARS = 6_000


class ChatSession(BaseModel):
    """What a review session keeps between turns (serialisable, so the API can store it)."""

    model_config = ConfigDict(extra="forbid")

    report: AuditReport
    lang: str = "en"
    files: list[str] = Field(default_factory=list)
    """Relative paths of the audited files (the tools may read any of them)."""
    history: list[dict[str, str]] = Field(default_factory=list)
    """Earlier turns: user questions and assistant answers, text only."""


class ToolCallRecord(BaseModel):
    name: str
    arguments: dict[str, Any]
    result: str


class ChatAnswer(BaseModel):
    text: str
    tool_calls: list[ToolCallRecord] = Field(default_factory=list)
    proposed_fixes: dict[str, Fix] = Field(default_factory=dict)
    """Finding id -> an LLM patch, unverified until torchdoctor/agent/fixes runs it."""
    truncated: bool = False
    notes: list[str] = Field(default_factory=list)
    usage: dict[str, int] = Field(default_factory=dict)


def _tool(name: str, description: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": sorted(properties),
                "additionalProperties": False,
            },
        },
    }


TOOLS = [
    _tool(
        "read_file_window",
        "Numbered lines start..end of an audited file.",
        {"file": {"type": "string"}, "start": {"type": "integer"}, "end": {"type": "integer"}},
    ),
    _tool(
        "rerun_check",
        "Re-run torchdoctor's static checks on one audited file.",
        {"file": {"type": "string"}},
    ),
    _tool(
        "run_probe",
        "Run an instrumented sandbox probe (e.g. 'nan', 'syncs', 'memory').",
        {"name": {"type": "string"}, "file": {"type": "string"}},
    ),
    _tool(
        "propose_fix",
        "Submit a unified diff fixing a finding; recorded as unverified.",
        {"finding_id": {"type": "string"}, "diff": {"type": "string"}},
    ),
]


class _Tools:
    def __init__(
        self, reasoner: LLMReasoner, report: AuditReport, probe: ProbeRunner | None, boundary: str
    ) -> None:
        self.reasoner = reasoner
        self.report = report
        self.probe = probe
        self.boundary = boundary
        self.files = sorted({f.file for f in report.findings} | _audited_files(report))
        self.fixes: dict[str, Fix] = {}

    def run(self, name: str, raw_arguments: str) -> tuple[dict[str, Any], str]:
        try:
            arguments = json.loads(raw_arguments or "{}")
        except json.JSONDecodeError:
            return {}, "error: the arguments are not valid JSON"
        if not isinstance(arguments, dict):
            return {}, "error: the arguments must be a JSON object"
        handler = getattr(self, f"_{name}", None) if name in _TOOL_NAMES else None
        if handler is None:
            return arguments, f"error: unknown tool {name!r}"
        try:
            result: str = handler(**arguments)
        except TypeError as err:
            result = f"error: bad arguments ({err})"
        return arguments, self._delimit(result[:_MAX_RESULT_CHARS])

    def _delimit(self, text: str) -> str:
        safe = text.replace(self.boundary, "[boundary removed]")
        return f"<<<{self.boundary} tool result\n{safe}\n{self.boundary}>>>"

    def _read_file_window(self, file: str, start: int, end: int) -> str:
        lines = self.reasoner.files.lines(file) if file in self.files else None
        if lines is None:
            return f"error: {file!r} is not an audited file"
        start = max(1, int(start))
        end = min(len(lines), int(end), start + _MAX_WINDOW - 1)
        if start > end:
            return f"error: {file} has {len(lines)} lines"
        return numbered(lines, start, end, context=0)

    def _rerun_check(self, file: str) -> str:
        lines = self.reasoner.files.lines(file) if file in self.files else None
        if lines is None:
            return f"error: {file!r} is not an audited file"
        result = analyse_files([(file, "\n".join(lines) + "\n")], workers=1)
        found = result.all_findings()
        if not found:
            return f"{file}: no static finding"
        return "\n".join(f"{f.rule} {f.severity.value} line {f.line}: {f.message}" for f in found)

    def _run_probe(self, name: str, file: str = "") -> str:
        if self.probe is None:
            return "unavailable: this session has no sandbox to run probes in"
        return self.probe(name, {"file": file})

    def _propose_fix(self, finding_id: str, diff: str) -> str:
        finding = next((f for f in self.report.findings if f.id == finding_id), None)
        if finding is None:
            return f"error: no finding {finding_id!r} in this audit"
        try:
            checked = check_diff(diff, self.files, self.reasoner.files.lines)
        except DiffRejected as err:
            return f"rejected: {err}"
        self.fixes[finding_id] = Fix(diff=checked, verified=False, origin="llm")
        return "recorded as an unverified proposal; only running it in the sandbox can verify it"


_TOOL_NAMES = {tool["function"]["name"] for tool in TOOLS}


def _audited_files(report: AuditReport) -> set[str]:
    files = {ev.file for f in report.findings for ev in f.evidence if ev.file}
    if report.target.kind == "file":
        files.add(report.target.path.rsplit("/", 1)[-1])
    return files


def chat_turn(
    session: ChatSession,
    question: str,
    *,
    reasoner: LLMReasoner,
    probe: ProbeRunner | None = None,
) -> ChatAnswer:
    """Answer one question about `session.report`; appends the turn to `session.history`."""
    report = session.report
    findings = [
        {
            "id": f.id,
            "checkpoint": f.checkpoint,
            "rule": f.rule,
            "severity": f.severity.value,
            "status": f.status.value,
            "file": f.file,
            "line": f.line,
            "title": f.title,
        }
        for f in report.findings
    ]
    coverage = dict(sorted(Counter(c.verdict for c in report.coverage).items()))
    boundary = boundary_for(
        json.dumps(findings), report.target.path, question, *(m["content"] for m in session.history)
    )
    system = render(
        session.lang,
        "chat",
        findings=findings,
        coverage=coverage,
        target=report.target.path,
        boundary=boundary,
        max_tool_calls=reasoner.config.max_tool_calls,
    )
    tools = _Tools(reasoner, report, probe, boundary)
    tools.files = sorted(set(tools.files) | set(session.files))
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system},
        *session.history,
        {"role": "user", "content": question},
    ]
    usage = Usage()
    records: list[ToolCallRecord] = []
    answer = ChatAnswer(text="")
    try:
        answer = _loop(reasoner, messages, tools, records, usage)
    except (LLMUnavailable, BudgetExhausted) as err:
        answer = ChatAnswer(text="", notes=[f"the LLM could not answer: {err}"])
    reasoner.account(usage, session.lang, "chat")
    session.history += [
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer.text},
    ]
    return answer.model_copy(
        update={"tool_calls": records, "proposed_fixes": tools.fixes, "usage": usage.as_dict()}
    )


def _loop(
    reasoner: LLMReasoner,
    messages: list[dict[str, Any]],
    tools: _Tools,
    records: list[ToolCallRecord],
    usage: Usage,
) -> ChatAnswer:
    bound = reasoner.config.max_tool_calls
    while True:
        message = reasoner.client.chat(messages, TOOLS, usage)
        calls = message.tool_calls or []
        if not calls:
            return ChatAnswer(text=message.content or "")
        messages.append(
            {
                "role": "assistant",
                "content": message.content or "",
                "tool_calls": [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {
                            "name": call.function.name,
                            "arguments": call.function.arguments,
                        },
                    }
                    for call in calls
                ],
            }
        )
        for call in calls:
            if len(records) >= bound:
                note = (
                    f"stopped after {bound} tool calls (the per-turn limit); "
                    "the answer may be incomplete"
                )
                return ChatAnswer(text=message.content or "", truncated=True, notes=[note])
            arguments, result = tools.run(call.function.name, call.function.arguments)
            records.append(
                ToolCallRecord(name=call.function.name, arguments=arguments, result=result)
            )
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
