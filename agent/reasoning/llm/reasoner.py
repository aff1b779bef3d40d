"""The LLM reasoner: the offline result first, then validated model findings and explanations.

The model can only add: new findings that survive validation against the code, explanations
attached to reported findings as `llm` evidence, and `how` notes on coverage. It can never
remove or alter an offline finding, never change a status, and a point the model could not
reason over (endpoint down, budget spent, unusable answer) completes with the offline result
and a note saying so.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel

from agent.checklist import items_of_point, phase_of_point, point_title
from agent.checks.registry import all_rules
from agent.models import CoverageEntry, Evidence, Finding, Fix
from agent.reasoning.base import PointRequest, PointResult, Reasoner
from agent.reasoning.llm.budget import Budget, BudgetExhausted, tokens_for_chars
from agent.reasoning.llm.cache import ResponseCache
from agent.reasoning.llm.client import (
    AnswerInvalid,
    LLMClient,
    LLMUnavailable,
    Usage,
    content_chars,
)
from agent.reasoning.llm.config import OpenAIConfig
from agent.reasoning.llm.diffs import DiffRejected, check_diff
from agent.reasoning.llm.rendering import boundary_for, render, template_hash
from agent.reasoning.llm.schema import PointAnswer
from agent.reasoning.llm.validation import Context, Validated, numbered, validate_answer
from agent.reasoning.llm.windows import Location, Selection, select_windows
from agent.reasoning.llm.workspace_files import WorkspaceFiles

_MIN_WINDOW_LINES = 20
_MAX_NOT_CHECKED_NOTES = 6


class FixAnswer(BaseModel):
    diff: str
    explanation: str = ""


class LLMReasoner:
    """Implements `Reasoner`; one instance per audit (it holds that audit's budget)."""

    def __init__(
        self,
        config: OpenAIConfig,
        workspace_root: Path,
        offline: Reasoner,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.offline = offline
        self.files = WorkspaceFiles(workspace_root)
        self.budget = Budget(config.token_budget, config.cost_budget_usd, config.price())
        self.cache_problem = ""
        cache = None
        if config.cache:
            try:
                cache = ResponseCache(config.resolved_cache_dir())
            except (OSError, sqlite3.Error) as err:
                self.cache_problem = f"answer cache disabled: {err}"
        self.client = LLMClient(config, self.budget, cache, sleep=sleep)
        self.usage = Usage()
        self.templates: dict[str, str] = {}
        self.degraded: dict[int, str] = {}
        self._failures = 0
        """Consecutive points the endpoint failed; at the configured limit it is not called."""
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"llm:{self.config.model}"

    def reason(self, request: PointRequest) -> PointResult:
        base = self.offline.reason(request)
        with self._lock:
            open_circuit = self._failures >= self.config.circuit_breaker_failures
        if open_circuit:
            detail = f"not called again after {self._failures} consecutive failures"
            return self._degraded(base, "endpoint unavailable", detail)
        try:
            result = self._reason(request, base)
        except BudgetExhausted as err:
            return self._degraded(base, "budget exhausted", str(err))
        except LLMUnavailable as err:
            with self._lock:
                self._failures += 1
            return self._degraded(base, "endpoint unavailable", str(err))
        except AnswerInvalid as err:
            return self._degraded(base, "answer unusable after one repair", str(err))
        with self._lock:
            self._failures = 0
        return result

    def _reason(self, request: PointRequest, base: PointResult) -> PointResult:
        point = request.point
        lang = request.lang
        native = [r.id for r in all_rules()]
        selection, messages = self._messages(request, base)
        completion = self.client.complete(messages, PointAnswer, f"torchdoctor_point_{point}")
        self.account(completion.usage, lang, "system", f"point_{point:02d}")
        shown = {w.file for w in selection.windows}
        ctx = Context(
            point=point,
            files=sorted(set(request.files) | shown),
            read=self.files.lines,
            native_rules=native,
            reported=base.findings,
            source=self.name,
        )
        answer = completion.answer
        validated = validate_answer(answer.findings, answer.explanations, ctx)
        result = PointResult(
            point=point,
            findings=[
                _explained(f, validated.explanations.get(f.id, []), self.name)
                for f in base.findings
            ]
            + validated.findings,
            coverage=_coverage(base.coverage, validated, point, self.name),
            notes=[
                *base.notes,
                *self._notes(point, validated, answer, completion.cached),
                *_window_notes(point, selection, self.config.max_window_lines),
            ],
            usage={**base.usage, **completion.usage.as_dict(), **_counts(validated)},
        )
        return result

    def _messages(
        self, request: PointRequest, base: PointResult
    ) -> tuple[Selection, list[dict[str, Any]]]:
        """System + point prompt, with windows shrunk until they fit the model's context."""
        max_lines = self.config.max_window_lines
        context_tokens = self.client.capabilities().context_tokens
        while True:
            selection = select_windows(
                _locations(request, base),
                request.files,
                self.files.lines,
                self.config.window_context,
                max_lines,
            )
            messages = [
                {"role": "system", "content": render(request.lang, "system")},
                {"role": "user", "content": self._point_prompt(request, base, selection)},
            ]
            needed = tokens_for_chars(content_chars(messages)) + self.config.max_output_tokens
            if context_tokens is None or needed <= context_tokens:
                return selection, messages
            if max_lines <= _MIN_WINDOW_LINES:
                raise LLMUnavailable(
                    f"the prompt needs ~{needed} tokens; the model's context is {context_tokens}"
                )
            max_lines = max(_MIN_WINDOW_LINES, max_lines // 2)

    def _point_prompt(self, request: PointRequest, base: PointResult, sel: Selection) -> str:
        verdicts = {c.item: c for c in base.coverage}
        items = [
            {
                "id": item.id,
                "title": item.title(request.lang),
                "verdict": verdicts[item.id].verdict if item.id in verdicts else "not-checked",
                "reason": _short_reason(verdicts.get(item.id)),
            }
            for item in items_of_point(request.point)
        ]
        reported = [
            {
                "id": f.id,
                "rule": f.rule,
                "severity": f.severity.value,
                "file": f.file,
                "line": f.line,
                "message": f.evidence[0].message if f.evidence else f.title,
            }
            for f in base.findings
        ]
        evidence = [
            {
                "source": ev.source,
                "message": ev.message,
                "excerpt": ev.excerpt,
                "location": f"{ev.file}:{ev.line}" if ev.file else "project",
            }
            for ev in request.evidence
        ]
        windows = [
            {"file": w.file, "start": w.start, "end": w.end, "text": w.render()}
            for w in sel.windows
        ]
        untrusted = (
            [w.render() for w in sel.windows]
            + [f"{ev.message}\n{ev.excerpt}" for ev in request.evidence]
            + [f.evidence[0].message if f.evidence else f.title for f in base.findings]
            + list(request.files)
        )
        return render(
            request.lang,
            f"point_{request.point:02d}",
            point=request.point,
            title=point_title(request.point, request.lang),
            phase=phase_of_point(request.point),
            items=items,
            rules=sorted(r.id for r in all_rules() if r.point == request.point),
            reported=reported,
            evidence=evidence,
            windows=windows,
            outline=sel.outline,
            omitted=sel.omitted_locations,
            boundary=boundary_for(*untrusted),
        )

    def account(self, usage: Usage, lang: str, *templates: str) -> None:
        """Add a request's usage and the templates it rendered to this audit's totals."""
        with self._lock:
            self.usage.add(usage)
            for name in templates:
                self.templates[f"{lang}/{name}"] = template_hash(lang, name)

    def _notes(
        self, point: int, validated: Validated, answer: PointAnswer, cached: bool
    ) -> list[str]:
        source = "cached answer of " if cached else ""
        notes = [
            f"point {point}: {source}{self.name} added {len(validated.findings)} finding(s) and "
            f"{sum(len(v) for v in validated.explanations.values())} explanation(s)"
        ]
        if validated.dropped:
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(validated.dropped.items()))
            notes.append(
                f"point {point}: dropped {sum(validated.dropped.values())} LLM claim(s) "
                f"that did not validate ({reasons})"
            )
        for rule, target in validated.rerouted:
            notes.append(f"point {point}: LLM finding {rule} re-routed to point {target}")
        if validated.fixes_rejected:
            notes.append(
                f"point {point}: {validated.fixes_rejected} LLM patch(es) rejected "
                "(they do not apply to the code)"
            )
        for text in answer.not_checked[:_MAX_NOT_CHECKED_NOTES]:
            notes.append(f"point {point}: the LLM could not check: {' '.join(text.split())[:200]}")
        return notes

    def _degraded(self, base: PointResult, reason: str, detail: str) -> PointResult:
        with self._lock:
            self.degraded[base.point] = reason
        note = f"point {base.point}: not reasoned over by the LLM: {reason} ({detail})"
        return base.model_copy(update={"notes": [*base.notes, note]})

    def propose_fix(self, finding: Finding, lang: str = "en") -> Fix | None:
        """An unverified LLM patch for one finding (None when the model gives none usable)."""
        lines = self.files.lines(finding.file)
        if lines is None:
            return None
        start = max(1, finding.line - self.config.window_context * 2)
        end = min(len(lines), finding.end_line + self.config.window_context * 2)
        text = numbered(lines, start, end, context=0)
        messages_ev = [ev.message for ev in finding.evidence]
        prompt = render(
            lang,
            "fix",
            finding=finding,
            messages=messages_ev,
            window={"file": finding.file, "start": start, "end": end, "text": text},
            boundary=boundary_for(text, *messages_ev),
        )
        messages = [
            {"role": "system", "content": render(lang, "system")},
            {"role": "user", "content": prompt},
        ]
        try:
            completion = self.client.complete(messages, FixAnswer, "torchdoctor_fix")
        except (BudgetExhausted, LLMUnavailable, AnswerInvalid):
            return None
        self.account(completion.usage, lang, "system", "fix")
        try:
            diff = check_diff(completion.answer.diff, [finding.file], self.files.lines)
        except DiffRejected:
            return None
        return Fix(diff=diff, verified=False, origin="llm")

    def provenance(self) -> dict[str, Any]:
        """What the report's `provenance.extra["llm"]` should record about this reasoner."""
        caps = self.client.capabilities() if self.usage.requests else None
        with self._lock:
            return {
                "model": self.config.model,
                "base_url": _without_credentials(self.config.base_url),
                "temperature": self.config.temperature,
                "seed": self.config.seed,
                "structured_outputs": None if caps is None else caps.structured_outputs,
                "context_tokens": None if caps is None else caps.context_tokens,
                "templates": dict(sorted(self.templates.items())),
                **self.usage.as_dict(),
                "probe_prompt_tokens": self.client.probe_usage.prompt_tokens,
                "probe_completion_tokens": self.client.probe_usage.completion_tokens,
                "cost_usd": self.budget.cost_label(),
                "token_budget": self.config.token_budget,
                "cache": self.cache_problem or ("on" if self.config.cache else "off"),
                "degraded_points": {str(k): v for k, v in sorted(self.degraded.items())},
            }


def _without_credentials(url: str) -> str:
    """The endpoint as the report may show it: no user:password, no query string."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _window_notes(point: int, selection: Selection, cap: int) -> list[str]:
    """Say which evidence the model did not see, so its silence is not read as a pass."""
    if selection.omitted_locations:
        return [
            f"point {point}: {selection.omitted_locations} evidence location(s) not shown to "
            f"the LLM (at most {cap} code lines per point)"
        ]
    if selection.outline:
        return [f"point {point}: the LLM saw only the files' outline (no located evidence)"]
    return []


def _short_reason(entry: CoverageEntry | None) -> str:
    """Only a failing verdict's reason helps the model; the others would cost tokens."""
    return entry.reason if entry is not None and entry.verdict == "fail" else ""


def _locations(request: PointRequest, base: PointResult) -> list[Location]:
    """Evidence locations, most severe native findings first."""
    ranked = sorted(base.findings, key=lambda f: (-f.severity.rank, f.file, f.line))
    found = [Location(f.file, f.line, f.end_line) for f in ranked]
    found += [
        Location(ev.file, ev.line, ev.line)
        for ev in request.evidence
        if ev.file is not None and ev.line is not None
    ]
    return found


def _explained(finding: Finding, explanations: list[str], source: str) -> Finding:
    if not explanations:
        return finding
    extra = [
        Evidence(
            source=source,
            kind="llm",
            message=text,
            file=finding.file,
            line=finding.line,
            data={"explains": finding.id},
        )
        for text in explanations
    ]
    return finding.model_copy(update={"evidence": [*finding.evidence, *extra]})


def _coverage(
    entries: list[CoverageEntry], validated: Validated, point: int, source: str
) -> list[CoverageEntry]:
    """Items with a validated LLM finding fail; every item notes the LLM review in `how`."""
    failing: Counter[str] = Counter()
    for finding in validated.findings:
        if finding.checkpoint == point:
            for item in finding.evidence[0].data.get("items", []):
                failing[item] += 1
    out = []
    for entry in entries:
        how = f"{entry.how}; {source} review" if entry.how != "none" else f"{source} review"
        if failing[entry.item]:
            reason = f"{failing[entry.item]} LLM finding(s) validated against the code"
            reason = f"{entry.reason}; {reason}" if entry.verdict == "fail" else reason
            out.append(entry.model_copy(update={"verdict": "fail", "how": how, "reason": reason}))
        else:
            out.append(entry.model_copy(update={"how": how}))
    return out


def _counts(validated: Validated) -> dict[str, int]:
    return {
        "llm_findings_added": len(validated.findings),
        "llm_claims_dropped": sum(validated.dropped.values()),
        "llm_explanations": sum(len(v) for v in validated.explanations.values()),
        "llm_rerouted": len(validated.rerouted),
    }
