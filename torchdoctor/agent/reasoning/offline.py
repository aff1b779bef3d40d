"""The deterministic reasoner: the same evidence always gives the same findings and verdicts.

Conventions it reads from `Evidence.data` (producers: linters, probes):
- `items`: checklist item ids the evidence speaks to;
- `verdict`: "pass" | "fail" | "not-applicable" for those items (a probe's coverage hint);
- `finding`: {rule, severity, title, line?, end_line?, code?} when the evidence is a problem;
- `attach_to`: "rule|file|line" of a native finding, or of another peer's finding, that the
  evidence confirms (de-duplication).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from torchdoctor import __version__
from torchdoctor.agent.checklist import ITEMS_BY_ID, items_of_point, phase_of_point
from torchdoctor.agent.checks.base import RawFinding
from torchdoctor.agent.checks.registry import rules_by_id
from torchdoctor.agent.models import (
    RELATED_ROLE,
    CoverageEntry,
    Evidence,
    Finding,
    Severity,
    fingerprint,
)
from torchdoctor.agent.reasoning.base import PointRequest, PointResult, ReasonerBase

STATIC_SOURCE = "torchdoctor-static"


def attach_key(rule: str, file: str, line: int) -> str:
    return f"{rule}|{file}|{line}"


class OfflineReasoner(ReasonerBase):
    """Maps evidence to findings and coverage with fixed rules; no model, no network."""

    @property
    def name(self) -> str:
        return "offline"

    def reason(self, request: PointRequest) -> PointResult:
        attached: dict[str, list[Evidence]] = {}
        standalone: list[Evidence] = []
        for ev in request.evidence:
            key = ev.data.get("attach_to")
            if isinstance(key, str):
                attached.setdefault(key, []).append(ev)
            else:
                standalone.append(ev)
        findings = self._native_findings(request, attached)
        findings += self._evidence_findings(request.point, standalone, attached)
        coverage = [
            self._verdict(item.id, request, findings, standalone)
            for item in items_of_point(request.point)
        ]
        return PointResult(point=request.point, findings=findings, coverage=coverage)

    def _native_findings(
        self, request: PointRequest, attached: dict[str, list[Evidence]]
    ) -> list[Finding]:
        rules = rules_by_id()
        occurrences: Counter[tuple[str, str, str]] = Counter()
        findings: list[Finding] = []
        for raw in sorted(request.raw_findings, key=lambda r: (r.file, r.line, r.rule)):
            key = (raw.rule, raw.file, " ".join(raw.code.split()))
            occurrence = occurrences[key]
            occurrences[key] += 1
            rule = rules.get(raw.rule)
            evidence = [_static_evidence(raw), *_related_evidence(raw)]
            evidence += _without_repeated_excerpt(
                raw, attached.get(attach_key(raw.rule, raw.file, raw.line), [])
            )
            findings.append(
                Finding(
                    id=fingerprint(raw.rule, raw.file, raw.code, occurrence),
                    rule=raw.rule,
                    checkpoint=request.point,
                    phase=phase_of_point(request.point),
                    severity=raw.severity,
                    title=rule.title if rule else raw.rule,
                    file=raw.file,
                    line=raw.line,
                    end_line=max(raw.end_line, raw.line),
                    evidence=evidence,
                )
            )
        return findings

    def _evidence_findings(
        self, point: int, evidence: list[Evidence], attached: dict[str, list[Evidence]]
    ) -> list[Finding]:
        findings: list[Finding] = []
        occurrences: Counter[tuple[str, str, str]] = Counter()
        for ev in evidence:
            spec: dict[str, Any] | None = ev.data.get("finding")
            if not spec or ev.file is None:
                continue
            line = int(spec.get("line") or ev.line or 1)
            code = str(spec.get("code") or ev.message)
            key = (str(spec["rule"]), ev.file, " ".join(code.split()))
            occurrence = occurrences[key]
            occurrences[key] += 1
            findings.append(
                Finding(
                    id=fingerprint(key[0], ev.file, code, occurrence),
                    rule=key[0],
                    checkpoint=point,
                    phase=phase_of_point(point),
                    severity=Severity(spec.get("severity", "medium")),
                    title=str(spec.get("title") or ev.message),
                    file=ev.file,
                    line=max(1, line),
                    end_line=max(1, line, int(spec.get("end_line") or line)),
                    evidence=[ev, *attached.get(attach_key(key[0], ev.file, line), [])],
                )
            )
        return findings

    def _verdict(
        self, item_id: str, request: PointRequest, findings: list[Finding], evidence: list[Evidence]
    ) -> CoverageEntry:
        rules = rules_by_id()
        covering = sorted(r for r in request.rules_run if r in rules and item_id in rules[r].items)
        failing = sorted({f.rule for f in findings if item_id in _finding_items(f, rules)})
        hints = [ev for ev in evidence if item_id in ev.data.get("items", [])]
        if failing:
            return CoverageEntry(
                item=item_id,
                verdict="fail",
                how=_how(covering, hints),
                reason=f"{len(failing)} rule(s) fired: {', '.join(failing)}",
            )
        hint_verdicts = {ev.data.get("verdict") for ev in hints} - {None}
        if "fail" in hint_verdicts:
            return CoverageEntry(
                item=item_id,
                verdict="fail",
                how=_how(covering, hints),
                reason="; ".join(ev.message for ev in hints if ev.data.get("verdict") == "fail"),
            )
        applicable = [r for r in covering if r in request.applicable_rules]
        if applicable or "pass" in hint_verdicts:
            # what a probe or artifact measured is the pass's reason (its figures), after the
            # rules' own "nothing found"
            measured = [ev.message for ev in hints if ev.data.get("verdict") == "pass"]
            return CoverageEntry(
                item=item_id,
                verdict="pass",
                how=_how(covering, hints),
                reason="; ".join(["checked; nothing found"] * bool(applicable) + measured),
            )
        unchecked = [rules[r].unchecked_when_absent for r in covering]
        if any(unchecked) and not hints:
            return CoverageEntry(
                item=item_id,
                verdict="not-checked",
                how=_how(covering, hints),
                reason="; ".join(sorted({u for u in unchecked if u})),
            )
        if "not-checked" in hint_verdicts and (not covering or any(unchecked)):
            # what the rules found missing (no test file), then what the hints add (a suite
            # offered, not yet written)
            said = sorted({u for u in unchecked if u})
            said += [ev.message for ev in hints if ev.data.get("verdict") == "not-checked"]
            return CoverageEntry(
                item=item_id,
                verdict="not-checked",
                how=_how(covering, hints),
                reason="; ".join(said),
            )
        if covering or "not-applicable" in hint_verdicts:
            return CoverageEntry(
                item=item_id,
                verdict="not-applicable",
                how=_how(covering, hints),
                reason="; ".join(ev.message for ev in hints)
                or f"{', '.join(covering)}: nothing in this code that they check",
            )
        return CoverageEntry(
            item=item_id,
            verdict="not-checked",
            how="none",
            reason=_not_checked_reason(item_id, request.rules_run),
        )


def _related_evidence(raw: RawFinding) -> list[Evidence]:
    """Related locations a rule named (e.g. where a leak starts, for a finding at its sink)."""
    related = raw.data.get("related")
    if not isinstance(related, list):
        return []
    return [
        Evidence(
            source=STATIC_SOURCE,
            source_version=__version__,
            kind="static",
            message=str(place["message"]),
            file=str(place["file"]),
            line=int(place["line"]),
            excerpt=str(place["excerpt"]),
            data={"role": RELATED_ROLE, "end_line": int(place["end_line"])},
        )
        for place in related
        if isinstance(place, dict)
    ]


def _static_evidence(raw: RawFinding) -> Evidence:
    return Evidence(
        source=STATIC_SOURCE,
        source_version=__version__,
        kind="static",
        message=raw.message,
        file=raw.file,
        line=raw.line,
        column=raw.column,
        excerpt=raw.excerpt,
        data=dict(raw.data),
    )


EXCERPT_CONTEXT = 2


def _without_repeated_excerpt(raw: RawFinding, confirmations: list[Evidence]) -> list[Evidence]:
    """A confirmation of the same lines keeps its message but not a second copy of the code:
    the excerpt is shown once, each tool listed."""
    shown = range(raw.line - EXCERPT_CONTEXT, raw.end_line + EXCERPT_CONTEXT + 1)
    return [
        ev.model_copy(update={"excerpt": ""})
        if ev.file == raw.file and ev.line is not None and ev.line in shown
        else ev
        for ev in confirmations
    ]


def _finding_items(finding: Finding, rules: dict[str, Any]) -> tuple[str, ...]:
    rule = rules.get(finding.rule)
    if rule is not None:
        return tuple(rule.items)
    items: list[str] = []
    for ev in finding.evidence:
        items += ev.data.get("items", [])
    return tuple(items)


def _how(covering: list[str], hints: list[Evidence]) -> str:
    parts = []
    if covering:
        parts.append("static rules: " + ", ".join(covering))
    # a tool or probe that did not run on this target is not evidence (its reason says why)
    sources = sorted({ev.source for ev in hints if ev.data.get("verdict") != "not-checked"})
    if sources:
        parts.append("evidence: " + ", ".join(sources))
    return "; ".join(parts) or "none"


PROBE_OPTIONS = {"compile": "--probe compile"}
"""Probes that an instrumented run makes only when asked, and the option that asks."""


def _not_checked_reason(item_id: str, rules_run: list[str] | None = None) -> str:
    """What would check the item: an option, a tool, a reviewer, or rules that are off."""
    checks = ITEMS_BY_ID[item_id].checks
    off = sorted(
        (r for r in rules_by_id().values() if item_id in r.items and r.id not in (rules_run or [])),
        key=lambda r: r.id,
    )
    probes = [c.removeprefix("probe:") for c in checks if c.startswith("probe:")]
    tools = [c.removeprefix("tool:") for c in checks if c.startswith("tool:")]
    reasons = []
    if probes and all(p in PROBE_OPTIONS for p in probes):
        options = ", ".join(PROBE_OPTIONS[p] for p in probes)
        reasons.append(f"needs an instrumented run with {options} (pass --run and {options})")
    elif probes:
        reasons.append(f"needs an instrumented run (probes: {', '.join(probes)}; pass --run)")
    if tools:
        reasons.append(f"needs {', '.join(tools)} (install torchdoctor[linters])")
    if "review" in checks:
        reasons.append("needs a reviewer's judgement (configure an LLM or review by hand)")
    opt_in = [r.id for r in off if r.tier == "opt-in"]
    ignored = [r.id for r in off if r.tier != "opt-in"]
    if opt_in:
        reasons.append(f"opt-in rule(s) not selected: {', '.join(opt_in)} (--select)")
    if ignored:
        reasons.append(f"rule(s) turned off: {', '.join(ignored)} (--ignore or config)")
    return "; ".join(reasons) or "no automated check covers this item yet"
