"""`--format github` (workflow commands) and `--format junit` (JUnit XML), with text from a
hostile repository: nothing it writes may end an annotation, forge another or break the XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from torchdoctor.agent.models import (
    AuditReport,
    CoverageEntry,
    Evidence,
    Finding,
    Provenance,
    Severity,
    Status,
    Summary,
    Target,
    ToolInfo,
)
from torchdoctor.agent.report import render
from torchdoctor.agent.report.github import escape_data, escape_property

HOSTILE_FILE = "we,ird:dir/a%0A\r\nb.py"
HOSTILE_MESSAGE = "100% wrong\n::error file=x.py::forged\r\x00\x1b[31m <x> & ]]>"


def finding(rule: str, severity: Severity, status: Status = Status.OPEN) -> Finding:
    return Finding(
        id=f"TD-{rule[:12]:0>12}",
        rule=rule,
        checkpoint=1,
        phase=1,
        severity=severity,
        title=f"title of {rule}, with: punctuation",
        file=HOSTILE_FILE,
        line=3,
        end_line=4,
        evidence=[
            Evidence(source="torchdoctor-static", message=HOSTILE_MESSAGE, excerpt="> 3 | x")
        ],
        status=status,
    )


@pytest.fixture
def report() -> AuditReport:
    findings = [
        finding("double-softmax", Severity.HIGH),
        finding("no-torch-seed", Severity.LOW),
        finding("torch-load-unsafe", Severity.MEDIUM, Status.WONT_FIX),
    ]
    return AuditReport(
        tool=ToolInfo(version="0"),
        target=Target(path="repo", kind="folder"),
        findings=findings,
        coverage=[
            CoverageEntry(item="1.1", verdict="pass", how="static"),
            CoverageEntry(item="1.2", verdict="not-checked", how="-", reason="needs a run\x07"),
        ],
        summary=Summary(
            total=3, by_severity={}, by_point={}, by_status={}, coverage={}, files_audited=1
        ),
        provenance=Provenance(
            python_version="3.11", reasoner="offline", audit_id="a", started_at="t", duration_s=0
        ),
    )


def test_escaping_follows_the_runners_rules() -> None:
    assert escape_data("a%b\r\nc:d,e") == "a%25b%0D%0Ac:d,e"
    assert escape_property("a%b\r\nc:d,e") == "a%25b%0D%0Ac%3Ad%2Ce"


def test_github_annotations_one_line_each_open_findings_only(report: AuditReport) -> None:
    lines = render(report, "github").splitlines()
    assert len(lines) == 2  # the wont-fix finding is not annotated
    high, low = lines
    assert high.startswith("::error file=repo/we%2Cird%3Adir/a%250A%0D%0Ab.py,line=3,endLine=4,")
    assert low.startswith("::notice ")
    properties, message = high[2:].split("::", 1)  # the first "::" after the command ends it
    assert "title=double-softmax (high%2C point 1)" in properties
    assert "\n" not in message and "\r" not in message and "::error file=x.py" in message
    assert message.count("%25") == 1 and "%0A" in message  # 100% and the newline, encoded


def test_junit_is_well_formed_and_counts_add_up(report: AuditReport) -> None:
    text = render(report, "junit")
    root = ET.fromstring(text.encode())  # raises on anything XML 1.0 cannot carry
    assert root.tag == "testsuites"
    cases = root.findall("./testsuite/testcase")
    failures = [c for c in cases if c.find("failure") is not None]
    skipped = [c for c in cases if c.find("skipped") is not None]
    assert (len(cases), len(failures), len(skipped)) == (5, 2, 2)
    assert root.attrib["tests"] == "5" and root.attrib["failures"] == "2"
    point1 = root.find("./testsuite[@name='point 1: Technical correctness']")
    assert point1 is not None and point1.attrib["tests"] == "5"
    failure = failures[0].find("failure")
    assert failure is not None and failure.attrib["type"] == "high"
    assert "<x> & ]]>" in (failure.text or "")  # escaped by the writer, read back intact
    assert "\x00" not in text and "\x1b" not in text and "\x07" not in text
    assert failures[0].attrib["file"] == "repo/" + HOSTILE_FILE  # attribute newlines survive
