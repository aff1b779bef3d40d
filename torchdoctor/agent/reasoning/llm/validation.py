"""Trust nothing: every model claim is checked against the code before it becomes a `Finding`.

A finding must name an audited file, a line in it, and a snippet of at least
`MIN_SNIPPET_CHARS` non-blank characters that really is there as whole tokens (at that line ±2,
whitespace-normalised: `ab` inside `tab` does not count); its checkpoint must be a point 1-12
(another point than the one asked is re-routed); its severity and kebab-case rule must validate
(rules not native are prefixed `llm-`). A claim that passes becomes a finding only when tool
evidence backs it: a tool-reported finding (a rule hit, a linter, a probe or sandbox run) or an
observation a tool call made (`Context.observed`) on the same lines. A claim nothing backs is
kept as an unverified `Hypothesis`, never a finding. Status is always open: anything the model
says about status is ignored. Explanations must name a finding the tools reported. Every
rejection is counted by reason.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from torchdoctor.agent.checklist import ITEMS_BY_ID, phase_of_point
from torchdoctor.agent.models import Evidence, Finding, Fix, Hypothesis, Severity, fingerprint
from torchdoctor.agent.reasoning.llm.diffs import DiffRejected, check_diff
from torchdoctor.agent.reasoning.llm.schema import LLMExplanation, LLMFinding

SNIPPET_SLACK = 2
_KEBAB = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_WS = re.compile(r"\s+")
MIN_SNIPPET_CHARS = 10
_MAX_TITLE = 200


@dataclass
class Validated:
    findings: list[Finding] = field(default_factory=list)
    hypotheses: list[Hypothesis] = field(default_factory=list)
    explanations: dict[str, list[str]] = field(default_factory=dict)
    dropped: Counter[str] = field(default_factory=Counter)
    rerouted: list[tuple[str, int]] = field(default_factory=list)
    fixes_rejected: int = 0


@dataclass(frozen=True)
class Context:
    point: int
    files: Sequence[str]
    read: Callable[[str], list[str] | None]
    native_rules: Collection[str]
    reported: Sequence[Finding]
    source: str
    """Evidence source label, e.g. 'llm:gpt-4o-mini'."""
    source_version: str = ""
    observed: Sequence[Evidence] = ()
    """What tool calls observed beyond the reported findings (a re-check, a probe run)."""


def validate_answer(
    findings: Sequence[LLMFinding], explanations: Sequence[LLMExplanation], ctx: Context
) -> Validated:
    out = Validated()
    taken = {f.id for f in ctx.reported}
    taken_places = {(f.rule, f.file, f.line) for f in ctx.reported}
    for claim in findings:
        checked = _validate_finding(claim, ctx, out)
        if checked is None:
            continue
        if checked.id in taken or (checked.rule, checked.file, checked.line) in taken_places:
            out.dropped["duplicate"] += 1
            continue
        taken.add(checked.id)
        taken_places.add((checked.rule, checked.file, checked.line))
        if isinstance(checked, Finding):
            out.findings.append(checked)
        else:
            out.hypotheses.append(checked)
    reported_ids = {f.id for f in ctx.reported}
    for note in explanations:
        text = note.explanation.strip()
        if note.finding_id not in reported_ids or not text:
            out.dropped["unknown-finding-id"] += 1
            continue
        out.explanations.setdefault(note.finding_id, []).append(text)
    return out


def _validate_finding(
    claim: LLMFinding, ctx: Context, out: Validated
) -> Finding | Hypothesis | None:
    if not 1 <= claim.checkpoint <= 12:
        out.dropped["invalid-checkpoint"] += 1
        return None
    try:
        severity = Severity(claim.severity.strip().lower())
    except ValueError:
        out.dropped["invalid-severity"] += 1
        return None
    rule = _rule_id(claim.rule, ctx.native_rules)
    title = " ".join(claim.title.split())[:_MAX_TITLE]
    if rule is None or not title:
        out.dropped["invalid-rule-or-title"] += 1
        return None
    file = _normalise_path(claim.file)
    lines = ctx.read(file) if file in ctx.files else None
    if lines is None:
        out.dropped["unknown-file"] += 1
        return None
    anchored = locate_snippet(lines, claim.line, claim.snippet)
    if anchored is None:
        out.dropped["snippet-not-found"] += 1
        return None
    start, end = anchored
    if claim.checkpoint != ctx.point:
        out.rerouted.append((rule, claim.checkpoint))
    code = "\n".join(lines[start - 1 : end])
    backing = backed_by(file, start, end, ctx)
    if not backing:
        return Hypothesis(
            id=fingerprint(rule, file, code),
            rule=rule,
            checkpoint=claim.checkpoint,
            severity=severity,
            title=title,
            file=file,
            line=start,
            end_line=end,
            explanation=" ".join(claim.explanation.split())[: _MAX_TITLE * 5],
            source=ctx.source,
        )
    items = (
        [claim.item]
        if ITEMS_BY_ID.get(claim.item) and claim.item.split(".")[0] == str(claim.checkpoint)
        else []
    )
    evidence = Evidence(
        source=ctx.source,
        source_version=ctx.source_version,
        kind="llm",
        message=(claim.explanation.strip() or title) + f" (backed by {'; '.join(backing)})",
        file=file,
        line=start,
        excerpt=numbered(lines, start, end),
        data={"items": items, "snippet": claim.snippet, "backed_by": backing},
    )
    return Finding(
        id=fingerprint(rule, file, code),
        rule=rule,
        checkpoint=claim.checkpoint,
        phase=phase_of_point(claim.checkpoint),
        severity=severity,
        title=title,
        file=file,
        line=start,
        end_line=end,
        evidence=[evidence],
        fix=_fix(claim.fix_diff, ctx, out),
    )


def backed_by(file: str, start: int, end: int, ctx: Context) -> list[str]:
    """What tool evidence lies on lines `start`..`end` of `file`: findings a tool reported
    (a model's own findings never back another claim) and what tool calls observed."""

    def on_lines(path: str | None, first: int | None, last: int | None) -> bool:
        return path == file and first is not None and first <= end and start <= (last or first)

    backing = [
        f"{f.rule} at {f.file}:{f.line}"
        for f in ctx.reported
        if any(ev.kind != "llm" for ev in f.evidence) and on_lines(f.file, f.line, f.end_line)
    ]
    backing += [
        f"{ev.source} at {ev.file}:{ev.line}: {' '.join(ev.message.split())[:120]}"
        for ev in ctx.observed
        if ev.kind != "llm" and on_lines(ev.file, ev.line, ev.line)
    ]
    return backing


def _fix(diff: str, ctx: Context, out: Validated) -> Fix | None:
    if not diff.strip():
        return None
    try:
        checked = check_diff(diff, ctx.files, ctx.read)
    except DiffRejected:
        out.fixes_rejected += 1
        return None
    return Fix(diff=checked, verified=False, origin="llm")


def _rule_id(raw: str, native: Collection[str]) -> str | None:
    rule = re.sub(r"[^a-z0-9]+", "-", raw.strip().lower()).strip("-")
    if not rule or not _KEBAB.match(rule):
        return None
    if rule in native or rule.startswith("llm-"):
        return rule
    return f"llm-{rule}"


def _normalise_path(path: str) -> str:
    cleaned = path.strip().replace("\\", "/")
    while cleaned.startswith("./"):
        cleaned = cleaned[2:]
    return cleaned


def _norm(text: str) -> str:
    return _WS.sub(" ", text).strip()


def locate_snippet(lines: Sequence[str], line: int, snippet: str) -> tuple[int, int] | None:
    """The (first, last) line the snippet really occupies near `line`, or None."""
    wanted = [_norm(part) for part in snippet.strip("\n").splitlines() if _norm(part)]
    if not wanted or len("".join(wanted).replace(" ", "")) < MIN_SNIPPET_CHARS:
        return None
    for start in _nearby(line, len(lines)):
        if not _has_tokens(_norm(lines[start - 1]), wanted[0]):
            continue
        end = start
        matched = True
        for part in wanted[1:]:
            end += 1
            while end <= len(lines) and not _norm(lines[end - 1]):
                end += 1
            if end > len(lines) or not _has_tokens(_norm(lines[end - 1]), part):
                matched = False
                break
        if matched:
            return start, end
    return None


def _has_tokens(line: str, part: str) -> bool:
    """`part` occurs in `line` without cutting an identifier or number at either end."""
    head = r"(?<!\w)" if part[0].isalnum() or part[0] == "_" else ""
    tail = r"(?!\w)" if part[-1].isalnum() or part[-1] == "_" else ""
    return re.search(head + re.escape(part) + tail, line) is not None


def _nearby(line: int, total: int) -> list[int]:
    order = [line + d for d in (0, -1, 1, -2, 2)]
    return [n for n in order if 1 <= n <= total]


def numbered(lines: Sequence[str], start: int, end: int, context: int = 2) -> str:
    first = max(1, start - context)
    last = min(len(lines), end + context)
    width = len(str(last))
    return "\n".join(
        f"{'>' if start <= n <= end else ' '} {n:>{width}} | {lines[n - 1]}"
        for n in range(first, last + 1)
    )
