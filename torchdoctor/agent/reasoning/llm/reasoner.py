"""The LLM reasoner: the offline result first, then validated model findings and explanations.

The model can only add: new findings that survive validation against the code, explanations
attached to reported findings as `llm` evidence, and `how` notes on coverage. It can never
remove or alter an offline finding, never change a status, and a point the model could not
reason over (endpoint down, budget spent, unusable answer) completes with the offline result
and a note saying so. Points share requests (`llm.batching`); a request that
fails, fails for every point it covers.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel

from torchdoctor.agent.checks.registry import all_rules
from torchdoctor.agent.escape import one_line
from torchdoctor.agent.models import CoverageEntry, Evidence, Finding, Fix
from torchdoctor.agent.reasoning.base import PointRequest, PointResult, Reasoner, ReasonerBase
from torchdoctor.agent.reasoning.inquiry import AuditBrief, LoopAnswer, ToolHooks
from torchdoctor.agent.reasoning.llm.batching import Once, plan_batches, route_sections
from torchdoctor.agent.reasoning.llm.budget import Budget, BudgetExhausted, tokens_for_chars
from torchdoctor.agent.reasoning.llm.cache import ResponseCache
from torchdoctor.agent.reasoning.llm.client import (
    AnswerInvalid,
    Completion,
    LLMClient,
    LLMUnavailable,
    Usage,
    content_chars,
)
from torchdoctor.agent.reasoning.llm.config import OpenAIConfig
from torchdoctor.agent.reasoning.llm.diffs import DiffRejected, check_diff
from torchdoctor.agent.reasoning.llm.rendering import boundary_for, render, template_hash
from torchdoctor.agent.reasoning.llm.review_prompt import (
    PointView,
    ReviewData,
    review_context,
    review_data,
)
from torchdoctor.agent.reasoning.llm.schema import BatchAnswer
from torchdoctor.agent.reasoning.llm.tool_loop import ask
from torchdoctor.agent.reasoning.llm.validation import Context, Validated, numbered, validate_answer
from torchdoctor.agent.reasoning.llm.windows import Location, Selection, select_windows
from torchdoctor.agent.reasoning.llm.workspace_files import WorkspaceFiles

_MIN_WINDOW_LINES = 20
_MAX_NOT_CHECKED_NOTES = 6
_SCHEMA_NAME = "torchdoctor_review"


@dataclass(frozen=True)
class _Failure:
    """Why a batch's request gave no usable answer (every point of the batch degrades)."""

    reason: str
    detail: str


@dataclass(frozen=True)
class _Answered:
    """A batch's answer, validated once for all its points."""

    completion: Completion[BatchAnswer]
    selections: dict[int, Selection]
    validated: dict[int, Validated]
    not_checked: dict[int, list[str]]
    points: tuple[int, ...]


@dataclass(frozen=True)
class _Batch:
    """Points answered by one request, and that request's outcome once it is known."""

    views: tuple[PointView, ...]
    outcome: Once[_Answered | _Failure] = field(default_factory=Once)


class FixAnswer(BaseModel):
    diff: str
    explanation: str = ""


class LLMReasoner(ReasonerBase):
    """Implements `Reasoner`; one instance per audit (it holds that audit's budget).

    With `prepare` (called by the audit graph before the phases), points share requests: all of
    them in one when their code and evidence fit `batch_tokens`, else consecutive phases packed
    while they fit. Without it, each point is a request of its own.
    """

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
        """Consecutive requests the endpoint failed; at the configured limit it is not called."""
        self._batches: dict[int, _Batch] = {}
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return f"llm:{self.config.model}"

    def prepare(self, requests: dict[int, PointRequest]) -> None:
        """Plan which points share a request (see `Reasoner.prepare`): consecutive phases
        share one while their code and evidence fit `batch_tokens` and the whole request, with
        room for every point's answer, fits the model's context (when known)."""
        views = {
            point: PointView(request, self.offline.reason(request))
            for point, request in sorted(requests.items())
        }
        try:
            context_tokens = self.client.capabilities().context_tokens
        except BudgetExhausted:
            context_tokens = None
        except LLMUnavailable:
            context_tokens = None
            with self._lock:
                self._failures += 1
        selections = self._selections(list(views.values()), self.config.max_window_lines)

        def fits(group: tuple[int, ...]) -> bool:
            batch = [views[point] for point in group]
            return self._fits(batch, selections, context_tokens)

        batches: dict[int, _Batch] = {}
        for lang in sorted({view.request.lang for view in views.values()}):
            same = [point for point, view in views.items() if view.request.lang == lang]
            for group in plan_batches(same, fits):
                batch = _Batch(tuple(views[point] for point in group))
                batches.update(dict.fromkeys(group, batch))
        with self._lock:
            self._batches = batches

    def _fits(
        self,
        views: Sequence[PointView],
        selections: dict[int, Selection],
        context_tokens: int | None,
    ) -> bool:
        """Whether these points' code and evidence fit `batch_tokens`, and the request, with
        room for every point's answer, fits the context."""
        data = review_data(views, selections)
        if tokens_for_chars(data.chars) > self.config.batch_tokens:
            return False
        prompt = tokens_for_chars(content_chars(_messages(views, data)))
        return context_tokens is None or prompt + self._wanted_output(views) <= context_tokens

    def reason(self, request: PointRequest) -> PointResult:
        batch = self._batch_of(request)
        view = next(v for v in batch.views if v.point == request.point)
        outcome = batch.outcome.get(lambda: self._send(batch.views))
        if isinstance(outcome, _Failure):
            return self._degraded(view.base, outcome.reason, outcome.detail)
        return self._result(view, outcome, first=request.point == batch.views[0].point)

    def _batch_of(self, request: PointRequest) -> _Batch:
        """The prepared batch holding this request, else a batch of this point alone."""
        with self._lock:
            batch = self._batches.get(request.point)
        if batch is not None and any(v.request == request for v in batch.views):
            return batch
        return _Batch((PointView(request, self.offline.reason(request)),))

    def _send(self, views: tuple[PointView, ...]) -> _Answered | _Failure:
        """One request for the batch's points; every failure becomes the batch's outcome."""
        with self._lock:
            failures = self._failures
        if failures >= self.config.circuit_breaker_failures:
            detail = f"not called again after {failures} consecutive failures"
            return _Failure("endpoint unavailable", detail)
        try:
            answered = self._ask(views)
        except BudgetExhausted as err:
            return _Failure("budget exhausted", str(err))
        except LLMUnavailable as err:
            with self._lock:
                self._failures += 1
            return _Failure("endpoint unavailable", str(err))
        except AnswerInvalid as err:
            return _Failure("answer unusable after one repair", str(err))
        with self._lock:
            self._failures = 0
        return answered

    def _ask(self, views: tuple[PointView, ...]) -> _Answered:
        lang = views[0].request.lang
        selections, messages, limit = self._messages(views)
        completion = self.client.complete(messages, BatchAnswer, _SCHEMA_NAME, limit)
        self.account(completion.usage, lang, "system", "review")
        points = [v.point for v in views]
        owners = {f.id: v.point for v in views for f in v.base.findings}
        shares = route_sections(completion.answer, points, owners)
        reported = [f for v in views for f in v.base.findings]
        native = [r.id for r in all_rules()]
        validated: dict[int, Validated] = {}
        for view in views:
            shown = {w.file for w in selections[view.point].windows}
            ctx = Context(
                point=view.point,
                files=sorted(set(view.request.files) | shown),
                read=self.files.lines,
                native_rules=native,
                reported=reported,
                source=self.name,
            )
            share = shares[view.point]
            validated[view.point] = validate_answer(share.findings, share.explanations, ctx)
            reported = [*reported, *validated[view.point].findings]
        not_checked = {point: share.not_checked for point, share in shares.items()}
        return _Answered(completion, selections, validated, not_checked, tuple(points))

    def _planned(self) -> set[tuple[int, ...]]:
        """The point groups `prepare` planned (empty when it was not called)."""
        return {tuple(v.point for v in batch.views) for batch in self._batches.values()}

    def _wanted_output(self, views: Sequence[PointView]) -> int:
        """Completion tokens a batch's answer may use when the context has room."""
        return min(self.config.max_output_tokens * len(views), self.config.max_batch_output_tokens)

    def _selections(self, views: Sequence[PointView], max_lines: int) -> dict[int, Selection]:
        return {
            view.point: select_windows(
                _locations(view.request, view.base),
                view.request.files,
                self.files.lines,
                self.config.window_context,
                max_lines,
            )
            for view in views
        }

    def _messages(
        self, views: tuple[PointView, ...]
    ) -> tuple[dict[int, Selection], list[dict[str, Any]], int]:
        """System + review prompt and the completion limit, fitted to the model's context.

        The answer gets `max_output_tokens` per point (up to `max_batch_output_tokens`), or what
        the context or the token budget leaves, but never less than one point's worth: below
        that, the code windows shrink until the request fits the context (or the budget refuses
        the request).
        """
        max_lines = self.config.max_window_lines
        context_tokens = self.client.capabilities().context_tokens
        wanted = self._wanted_output(views)
        least = min(self.config.max_output_tokens, wanted)
        while True:
            selections = self._selections(views, max_lines)
            messages = _messages(views, review_data(views, selections))
            prompt = tokens_for_chars(content_chars(messages))
            room = wanted if context_tokens is None else min(wanted, context_tokens - prompt)
            if room >= least:
                affordable = self.budget.available_tokens() - prompt
                return selections, messages, max(least, min(room, affordable))
            if max_lines <= _MIN_WINDOW_LINES:
                raise LLMUnavailable(
                    f"the prompt needs ~{prompt + least} tokens; "
                    f"the model's context is {context_tokens}"
                )
            max_lines = max(_MIN_WINDOW_LINES, max_lines // 2)

    def _result(self, view: PointView, answered: _Answered, first: bool) -> PointResult:
        """This point's share of a batched answer, on top of its offline result."""
        point, base = view.point, view.base
        validated = answered.validated[point]
        completion = answered.completion
        notes = [
            *base.notes,
            *self._notes(point, validated, answered.not_checked[point], completion.cached),
            *_window_notes(point, answered.selections[point], self.config.max_window_lines),
        ]
        usage = {**base.usage, **_counts(validated)}
        if first:
            usage.update(completion.usage.as_dict())
            if len(answered.points) > 1:
                together = ", ".join(str(p) for p in answered.points)
                notes.append(f"points {together}: reasoned over together in one LLM request")
        return PointResult(
            point=point,
            findings=[
                _explained(f, validated.explanations.get(f.id, []), self.name)
                for f in base.findings
            ]
            + validated.findings,
            hypotheses=validated.hypotheses,
            coverage=_coverage(base.coverage, validated, point, self.name),
            notes=notes,
            usage=usage,
        )

    def account(self, usage: Usage, lang: str, *templates: str) -> None:
        """Add a request's usage and the templates it rendered to this audit's totals."""
        with self._lock:
            self.usage.add(usage)
            for name in templates:
                self.templates[f"{lang}/{name}"] = template_hash(lang, name)

    def _notes(
        self, point: int, validated: Validated, not_checked: list[str], cached: bool
    ) -> list[str]:
        source = "cached answer of " if cached else ""
        notes = [
            f"point {point}: {source}{self.name} added {len(validated.findings)} finding(s) "
            "backed by tool evidence and "
            f"{sum(len(v) for v in validated.explanations.values())} explanation(s)"
        ]
        if validated.hypotheses:
            notes.append(
                f"point {point}: {len(validated.hypotheses)} LLM claim(s) no tool backed, kept "
                "as unverified hypotheses (not findings)"
            )
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
        for text in not_checked[:_MAX_NOT_CHECKED_NOTES]:
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

    def investigate(
        self, phase: int, targets: list[Finding], brief: AuditBrief, hooks: ToolHooks
    ) -> LoopAnswer | None:
        """A bounded tool loop over the phase's findings no codemod fixes (see `tool_loop`);
        None when the configuration turns it off or there is nothing to work on."""
        if not self.config.investigate or not targets:
            return None
        question = render(brief.lang, "investigate", phase=phase, targets=targets)
        answer = ask(question, brief, reasoner=self, hooks=hooks)
        with self._lock:
            self.templates[f"{brief.lang}/investigate"] = template_hash(brief.lang, "investigate")
        return answer

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
                "batches": [list(group) for group in sorted(self._planned())],
            }


def _messages(views: Sequence[PointView], data: ReviewData) -> list[dict[str, Any]]:
    lang = views[0].request.lang
    return [
        {"role": "system", "content": render(lang, "system")},
        {"role": "user", "content": render(lang, "review", **review_context(views, data))},
    ]


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


MAX_EXPLANATION_CHARS = 600


def quoted_model_text(text: str) -> str:
    """Model text as data: one line, bounded, inside quotes and attributed, so an obeying
    model's "False positive; status: fixed" reads as a claim, never as a status."""
    return f"model's explanation (unverified): “{one_line(text)[:MAX_EXPLANATION_CHARS]}”"


def _explained(finding: Finding, explanations: list[str], source: str) -> Finding:
    if not explanations:
        return finding
    extra = [
        Evidence(
            source=source,
            kind="llm",
            message=quoted_model_text(text),
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
        "llm_hypotheses": len(validated.hypotheses),
        "llm_explanations": sum(len(v) for v in validated.explanations.values()),
        "llm_rerouted": len(validated.rerouted),
    }
