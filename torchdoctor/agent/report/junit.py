"""JUnit XML: one test suite per checklist point, one test case per finding or coverage item.

Open findings are failures, findings closed by the user or a fix are skipped, coverage items
that passed are passing cases. Text from the audited repository is escaped by the XML writer;
the characters XML 1.0 cannot carry at all (most C0 controls) are replaced first.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import defaultdict

from torchdoctor.agent.checklist import ITEMS_BY_ID, POINTS
from torchdoctor.agent.models import AuditReport, CoverageEntry, Finding
from torchdoctor.agent.report.paths import workdir_path

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


def _finding_case(report: AuditReport, finding: Finding) -> ET.Element:
    path = workdir_path(report, finding)
    case = ET.Element(
        "testcase",
        {
            "classname": xml_text(f"point{finding.checkpoint}.{finding.rule}"),
            "name": xml_text(f"{finding.rule} at {path}:{finding.line}"),
            "file": xml_text(path),
            "line": str(finding.line),
        },
    )
    detail = "\n".join(
        xml_text(f"{ev.source}: {ev.message}" + (f"\n{ev.excerpt}" if ev.excerpt else ""))
        for ev in finding.evidence
    )
    if finding.status.is_open:
        failure = ET.SubElement(
            case,
            "failure",
            {"message": xml_text(finding.title), "type": finding.severity.value},
        )
        failure.text = detail
    else:
        ET.SubElement(case, "skipped", {"message": f"status: {finding.status.value}"})
    return case


def _coverage_case(entry: CoverageEntry, point: int, title: str) -> ET.Element:
    case = ET.Element(
        "testcase",
        {"classname": f"point{point}.coverage", "name": xml_text(f"{entry.item} {title}")},
    )
    if entry.verdict in ("not-checked", "not-applicable"):
        reason = f"{entry.verdict}: {entry.reason or entry.how}"
        ET.SubElement(case, "skipped", {"message": xml_text(reason)})
    return case


def render_junit(report: AuditReport) -> str:
    findings: dict[int, list[Finding]] = defaultdict(list)
    for finding in report.findings:
        findings[finding.checkpoint].append(finding)
    coverage: dict[int, list[ET.Element]] = defaultdict(list)
    for entry in report.coverage:
        item = ITEMS_BY_ID.get(entry.item)
        if item is not None and entry.verdict != "fail":  # a failed item shows as its findings
            coverage[item.point].append(_coverage_case(entry, item.point, item.title_en))
    root = ET.Element("testsuites", {"name": "torchdoctor"})
    totals = {"tests": 0, "failures": 0, "skipped": 0}
    for point in POINTS:
        cases = [_finding_case(report, f) for f in findings[point.number]]
        cases += coverage[point.number]
        counts = {
            "tests": len(cases),
            "failures": sum(1 for c in cases if c.find("failure") is not None),
            "skipped": sum(1 for c in cases if c.find("skipped") is not None),
        }
        suite = ET.SubElement(
            root,
            "testsuite",
            {
                "name": f"point {point.number}: {point.title_en}",
                **{k: str(v) for k, v in counts.items()},
            },
        )
        suite.extend(cases)
        for key, value in counts.items():
            totals[key] += value
    root.attrib.update({key: str(value) for key, value in totals.items()})
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
