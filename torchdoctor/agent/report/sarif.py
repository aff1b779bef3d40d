"""SARIF 2.1.0: one run, the native rules as the driver's rules, one result per finding.

A model's unverified hypotheses are kept in the run's property bag, not as results: GitHub
code scanning opens an alert for every result it reads (its supported subset has no
`kind`, so a `kind: "review"` result would still be an alert), and a claim no tool backed
must not open one. Property bags are valid SARIF that GitHub ignores."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from torchdoctor.agent.checks.registry import rule_doc, rules_by_id
from torchdoctor.agent.escape import sarif_text
from torchdoctor.agent.models import AuditReport, Finding, Hypothesis, Severity, Status

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_LEVEL = {
    Severity.CRITICAL: "error",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "note",
    Severity.INFO: "note",
}


def _rule_descriptor(rule_id: str, finding: Finding) -> dict[str, Any]:
    rule = rules_by_id().get(rule_id)
    descriptor: dict[str, Any] = {
        "id": rule_id,
        "name": "".join(part.title() for part in rule_id.split("-")),
        "shortDescription": {"text": rule.title if rule else finding.title},
        "defaultConfiguration": {"level": _LEVEL[rule.severity if rule else finding.severity]},
        "properties": {
            "checkpoint": finding.checkpoint,
            "phase": finding.phase,
            "tags": [f"point-{finding.checkpoint}"],
        },
    }
    if rule is not None:
        doc = rule_doc(rule)
        descriptor["fullDescription"] = {"text": doc.splitlines()[0] if doc else rule.title}
        descriptor["help"] = {"text": doc or rule.title}
    return descriptor


def _result(finding: Finding, rule_index: int) -> dict[str, Any]:
    message = finding.evidence[0].message if finding.evidence else finding.title
    result: dict[str, Any] = {
        "ruleId": finding.rule,
        "ruleIndex": rule_index,
        "level": _LEVEL[finding.severity],
        "message": {"text": sarif_text(f"{finding.title}: {message}")},
        "locations": [
            {
                "physicalLocation": {
                    "artifactLocation": {
                        "uri": quote(sarif_text(finding.file)),
                        "uriBaseId": "SRCROOT",
                    },
                    "region": {"startLine": finding.line, "endLine": finding.end_line},
                }
            }
        ],
        "partialFingerprints": {"torchdoctor/v1": finding.id},
        "properties": {
            "severity": finding.severity.value,
            "status": finding.status.value,
            "checkpoint": finding.checkpoint,
            "phase": finding.phase,
        },
    }
    related = [
        (ev, ev.file, ev.line)
        for ev in finding.evidence
        if ev.data.get("role") == "related" and ev.file and ev.line
    ]
    if related:
        result["relatedLocations"] = [
            {
                "id": number,
                "physicalLocation": {
                    "artifactLocation": {"uri": file, "uriBaseId": "SRCROOT"},
                    "region": {
                        "startLine": line,
                        "endLine": max(int(ev.data.get("end_line") or line), line),
                    },
                },
                "message": {"text": ev.message},
            }
            for number, (ev, file, line) in enumerate(related, start=1)
        ]
    if finding.cell is not None:
        cell, line = finding.cell
        result["properties"]["notebookCell"] = {"cell": cell, "line": line}
        result["message"]["text"] += f" (notebook cell {cell}, line {line})"
    if finding.status == Status.WONT_FIX:
        result["suppressions"] = [
            {"kind": "external", "status": "accepted", "justification": "wont-fix in ISSUES.md"}
        ]
    if finding.fix is not None:
        result["properties"]["fix"] = {"verified": finding.fix.verified, "diff": finding.fix.diff}
    return result


def _hypothesis(h: Hypothesis) -> dict[str, Any]:
    """An unverified claim, its texts escaped as a result's would be."""
    return {
        "id": sarif_text(h.id),
        "ruleId": sarif_text(h.rule),
        "checkpoint": h.checkpoint,
        "claimedSeverity": h.severity.value,
        "message": {"text": sarif_text(": ".join(filter(None, (h.title, h.explanation))))},
        "location": {
            "artifactLocation": {"uri": quote(sarif_text(h.file)), "uriBaseId": "SRCROOT"},
            "region": {"startLine": h.line, "endLine": h.end_line},
        },
        "source": sarif_text(h.source),
    }


def render_sarif(report: AuditReport) -> str:
    descriptors: list[dict[str, Any]] = []
    index: dict[str, int] = {}
    for finding in report.findings:
        if finding.rule not in index:
            index[finding.rule] = len(descriptors)
            descriptors.append(_rule_descriptor(finding.rule, finding))
    sarif = {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "torchdoctor",
                        "version": report.tool.version,
                        "rules": descriptors,
                    }
                },
                "originalUriBaseIds": {"SRCROOT": {"description": {"text": report.target.path}}},
                "results": [_result(f, index[f.rule]) for f in report.findings],
                "properties": {
                    "coverage": [c.model_dump() for c in report.coverage],
                    "summary": report.summary.model_dump(mode="json"),
                    "unverifiedHypotheses": [_hypothesis(h) for h in report.hypotheses],
                },
            }
        ],
    }
    return json.dumps(sarif, indent=2, ensure_ascii=False) + "\n"
