"""The LLM's bounded tool loop: a question about an audit, answered over its evidence with tools.

The model may read numbered windows of the audited files, search them, re-run the static checks
on a file, run the probes harness on a script in the sandbox (when the caller gives a sandbox)
propose a patch for a finding (checked against the code, then verified when the caller gives
a verifier, else recorded unverified) and report a problem: checked against file, line and
snippet, it becomes a finding only when tool evidence backs it (a finding a tool reported, or
what this loop's re-checks and probe runs observed, on those lines), else an unverified
hypothesis. Free text is never a finding. Every tool result is untrusted data, delimited like the
code in review prompts. The loop is bounded by model requests, tool calls, tokens and wall time;
at a bound it stops and says which one. The audit graph uses it per phase, the chat session per
question: one loop, one typed answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.checks.registry import all_rules
from torchdoctor.agent.models import Evidence, Finding, Fix, Hypothesis
from torchdoctor.agent.reasoning.inquiry import (
    AuditBrief,
    LoopAnswer,
    LoopBounds,
    StopReason,
    ToolCallRecord,
    ToolHooks,
)
from torchdoctor.agent.reasoning.llm.budget import BudgetExhausted, tokens_for_chars
from torchdoctor.agent.reasoning.llm.client import LLMUnavailable, Usage, content_chars
from torchdoctor.agent.reasoning.llm.config import OpenAIConfig
from torchdoctor.agent.reasoning.llm.diffs import DiffRejected, check_diff
from torchdoctor.agent.reasoning.llm.rendering import boundary_for, render
from torchdoctor.agent.reasoning.llm.schema import LLMFinding
from torchdoctor.agent.reasoning.llm.validation import Context, numbered, validate_answer

if TYPE_CHECKING:
    from torchdoctor.agent.reasoning.llm.reasoner import LLMReasoner

MAX_WINDOW = 120
MAX_RESULT_CHARS = 6_000
MAX_SEARCH_HITS = 40


def bounds_of(config: OpenAIConfig) -> LoopBounds:
    """The configured bounds of one loop."""
    return LoopBounds(
        max_turns=config.loop_turns,
        max_tool_calls=config.max_tool_calls,
        max_tokens=config.loop_tokens,
        max_seconds=config.loop_seconds,
    )


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
        "search_code",
        "Lines of the audited files containing a text (literal, case-sensitive).",
        {"text": {"type": "string"}},
    ),
    _tool(
        "rerun_check",
        "Re-run torchdoctor's static checks on one audited file.",
        {"file": {"type": "string"}},
    ),
    _tool(
        "run_probes",
        "Run an audited script for a few seeded optimizer steps under the instrumented probes "
        "harness in the sandbox; returns what the run measured.",
        {"script": {"type": "string"}, "args": {"type": "array", "items": {"type": "string"}}},
    ),
    _tool(
        "propose_fix",
        "Submit a unified diff fixing a finding; it is checked against the code and verified "
        "by running it, never trusted as is.",
        {"finding_id": {"type": "string"}, "diff": {"type": "string"}},
    ),
    _tool(
        "report_problem",
        "Report a problem at a place in the code (the snippet copied verbatim from that line). "
        "It becomes a finding only if tool evidence backs it: a finding the tools reported, or "
        "what rerun_check or run_probes observed, on those lines; otherwise it is kept as an "
        "unverified hypothesis.",
        {
            "checkpoint": {"type": "integer"},
            "rule": {"type": "string"},
            "severity": {"type": "string"},
            "title": {"type": "string"},
            "file": {"type": "string"},
            "line": {"type": "integer"},
            "snippet": {"type": "string"},
            "explanation": {"type": "string"},
        },
    ),
]
TOOL_NAMES = frozenset(tool["function"]["name"] for tool in TOOLS)


class _Tools:
    """The tools' implementations over one audit brief; results are delimited data."""

    def __init__(
        self, reasoner: LLMReasoner, brief: AuditBrief, hooks: ToolHooks, boundary: str
    ) -> None:
        self.read = reasoner.files.lines
        self.brief = brief
        self.hooks = hooks
        self.boundary = boundary
        self.files = set(brief.files)
        self.fixes: dict[str, Fix] = {}
        self.source = reasoner.name
        self.observed: list[Evidence] = []
        """What this loop's re-checks and probe runs saw: evidence a reported problem may cite."""
        self.findings: list[Finding] = []
        self.hypotheses: list[Hypothesis] = []

    def run(self, name: str, raw_arguments: str) -> tuple[dict[str, Any], str]:
        try:
            arguments = json.loads(raw_arguments or "{}")
        except json.JSONDecodeError:
            return {}, self._delimit("error: the arguments are not valid JSON")
        if not isinstance(arguments, dict):
            return {}, self._delimit("error: the arguments must be a JSON object")
        handler = getattr(self, f"_{name}", None) if name in TOOL_NAMES else None
        if handler is None:
            return arguments, self._delimit(f"error: unknown tool {name[:60]!r}")
        try:
            result: str = handler(**arguments)
        except (TypeError, ValueError) as err:
            result = f"error: bad arguments ({err})"
        return arguments, self._delimit(result[:MAX_RESULT_CHARS])

    def _delimit(self, text: str) -> str:
        safe = text.replace(self.boundary, "[boundary removed]")
        return f"<<<{self.boundary} tool result\n{safe}\n{self.boundary}>>>"

    def _lines(self, file: str) -> list[str] | None:
        return self.read(file) if isinstance(file, str) and file in self.files else None

    def _read_file_window(self, file: str, start: int, end: int) -> str:
        lines = self._lines(file)
        if lines is None:
            return f"error: {file!r} is not an audited file"
        start = max(1, int(start))
        end = min(len(lines), int(end), start + MAX_WINDOW - 1)
        if start > end:
            return f"error: {file} has {len(lines)} lines"
        return numbered(lines, start, end, context=0)

    def _search_code(self, text: str) -> str:
        if not isinstance(text, str) or not text.strip():
            return "error: give a non-empty text to search for"
        hits: list[str] = []
        for file in sorted(self.files):
            for number, line in enumerate(self._lines(file) or [], start=1):
                if text in line:
                    hits.append(f"{file}:{number}: {line.strip()[:200]}")
        if not hits:
            return f"no line contains {text[:80]!r}"
        more = len(hits) - MAX_SEARCH_HITS
        shown = "\n".join(hits[:MAX_SEARCH_HITS])
        return shown + (f"\n... {more} more" if more > 0 else "")

    def _rerun_check(self, file: str) -> str:
        lines = self._lines(file)
        if lines is None:
            return f"error: {file!r} is not an audited file"
        result = analyse_files([(file, "\n".join(lines) + "\n")], workers=1)
        found = result.all_findings()
        self.observed += [
            Evidence(
                source=f"rerun_check {f.rule}",
                kind="static",
                message=f.message,
                file=file,
                line=f.line,
            )
            for f in found
        ]
        if not found:
            return f"{file}: no static finding"
        return "\n".join(f"{f.rule} {f.severity.value} line {f.line}: {f.message}" for f in found)

    def _run_probes(self, script: str, args: list[str] | None = None) -> str:
        if self.hooks.run_probes is None:
            return "unavailable: no sandbox was given to run probes in"
        if self._lines(script) is None:
            return f"error: {script!r} is not an audited file"
        words = [str(a) for a in args or []]
        outcome = self.hooks.run_probes(script, words)
        self.observed += outcome.evidence
        return outcome.text

    def _report_problem(self, **claimed: Any) -> str:
        claim = LLMFinding.model_validate(claimed)
        context = Context(
            point=claim.checkpoint,
            files=sorted(self.files),
            read=self.read,
            native_rules=[r.id for r in all_rules()],
            reported=[*self.brief.findings, *self.findings],
            source=self.source,
            observed=self.observed,
        )
        checked = validate_answer([claim], [], context)
        if checked.findings:
            finding = checked.findings[0]
            self.findings.append(finding)
            backing = "; ".join(finding.evidence[0].data["backed_by"])
            return f"recorded as finding {finding.id}, backed by {backing}"
        if checked.hypotheses:
            self.hypotheses.append(checked.hypotheses[0])
            return (
                "recorded as an unverified hypothesis, not a finding: no finding a tool "
                "reported and nothing rerun_check or run_probes observed is on those lines"
            )
        reasons = ", ".join(sorted(checked.dropped))
        return f"rejected: {reasons or 'not a valid claim'}"

    def _propose_fix(self, finding_id: str, diff: str) -> str:
        finding = next((f for f in self.brief.findings if f.id == finding_id), None)
        if finding is None:
            return f"error: no finding {str(finding_id)[:40]!r} in this audit"
        try:
            checked = check_diff(diff, sorted(self.files), self.read)
        except DiffRejected as err:
            return f"rejected: {err}"
        fix = Fix(diff=checked, verified=False, origin="llm")
        if self.hooks.verify_fix is None:
            self.fixes[finding_id] = fix
            return (
                "recorded as an unverified proposal; only running it in the sandbox can verify it"
            )
        fix = self.hooks.verify_fix(finding, fix)
        self.fixes[finding_id] = fix
        steps = "; ".join(
            f"{v.step}: {'ok' if v.ok else 'FAILED'} {v.detail}" for v in fix.verification
        )
        return f"{'verified' if fix.verified else 'not verified'}: {steps}"


class _Clock:
    def __init__(self, bounds: LoopBounds, now: Callable[[], float]) -> None:
        self.bounds = bounds
        self.now = now
        self.start = now()

    def out_of_time(self) -> bool:
        return self.now() - self.start >= self.bounds.max_seconds


_STOP_NOTES: dict[StopReason, str] = {
    "turns": "stopped after {max_turns} model requests (the loop's limit)",
    "tool_calls": "stopped after {max_tool_calls} tool calls (the per-turn limit)",
    "tokens": "stopped before exceeding {max_tokens} tokens (the loop's limit)",
    "time": "stopped after {max_seconds:g} s (the loop's time limit)",
}


def ask(
    question: str,
    brief: AuditBrief,
    *,
    reasoner: LLMReasoner,
    hooks: ToolHooks | None = None,
    bounds: LoopBounds | None = None,
    history: Sequence[dict[str, str]] = (),
    now: Callable[[], float] = time.monotonic,
) -> LoopAnswer:
    """Answer `question` about the audit in `brief`, calling tools within `bounds` (default:
    the reasoner's configuration). Never raises for the endpoint's or the model's failures: an
    unusable endpoint, a spent budget or a bound ends the loop with a note saying which."""
    bounds = bounds or bounds_of(reasoner.config)
    hooks = hooks or ToolHooks()
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
        for f in brief.findings
    ]
    boundary = boundary_for(
        json.dumps(findings), brief.target, question, *(m["content"] for m in history)
    )
    system = render(
        brief.lang,
        "chat",
        findings=findings,
        coverage=brief.coverage,
        target=brief.target,
        boundary=boundary,
        max_tool_calls=bounds.max_tool_calls,
    )
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system},
        *history,
        {"role": "user", "content": question},
    ]
    tools = _Tools(reasoner, brief, hooks, boundary)
    usage = Usage()
    records: list[ToolCallRecord] = []
    clock = _Clock(bounds, now)
    try:
        text, stopped = _loop(reasoner, messages, tools, records, usage, clock)
        notes = (
            [_STOP_NOTES[stopped].format(**bounds.model_dump())] if stopped in _STOP_NOTES else []
        )
        if notes:
            notes[0] += "; the answer may be incomplete"
    except BudgetExhausted as err:
        text, stopped, notes = "", "budget", [f"the LLM could not answer: {err}"]
    except LLMUnavailable as err:
        text, stopped, notes = "", "unavailable", [f"the LLM could not answer: {err}"]
    reasoner.account(usage, brief.lang, "chat")
    return LoopAnswer(
        text=text,
        stopped=stopped,
        tool_calls=records,
        proposed_fixes=tools.fixes,
        findings=tools.findings,
        hypotheses=tools.hypotheses,
        notes=notes,
        usage=usage.as_dict(),
    )


def _loop(
    reasoner: LLMReasoner,
    messages: list[dict[str, Any]],
    tools: _Tools,
    records: list[ToolCallRecord],
    usage: Usage,
    clock: _Clock,
) -> tuple[str, StopReason]:
    bounds = clock.bounds
    text = ""
    for _turn in range(bounds.max_turns):
        if clock.out_of_time():
            return text, "time"
        spent = usage.prompt_tokens + usage.completion_tokens
        if spent + tokens_for_chars(content_chars(messages)) > bounds.max_tokens:
            return text, "tokens"
        message = reasoner.client.chat(messages, TOOLS, usage)
        text = message.content or ""
        calls = message.tool_calls or []
        if not calls:
            return text, "answered"
        messages.append(
            {
                "role": "assistant",
                "content": text,
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
            if len(records) >= bounds.max_tool_calls:
                return text, "tool_calls"
            if clock.out_of_time():
                return text, "time"
            started = clock.now()
            arguments, result = tools.run(call.function.name, call.function.arguments)
            records.append(
                ToolCallRecord(
                    name=call.function.name[:60],
                    arguments=arguments,
                    result=result,
                    seconds=round(clock.now() - started, 3),
                )
            )
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    return text, "turns"
