"""The harness document is untrusted: bounded before parsing, schema-validated, and its
findings kept only at audited lines, with run-only severity capped unless confirmed."""

from __future__ import annotations

import json

import pytest

from torchdoctor.agent.checks.base import RawFinding
from torchdoctor.agent.checks.engine import FileResult, StaticResult
from torchdoctor.agent.evidence.trust import (
    MAX_DEPTH,
    UntrustedEvidence,
    cap_run_severity,
    parse_document,
    vet_locations,
)
from torchdoctor.agent.models import Evidence, Severity

TEXT = {"train.py": "import torch\nx = 1\ny = 2\n"}


def run_finding(file: str, line: int, severity: str = "critical") -> tuple[int, Evidence]:
    spec = {"rule": "probe-nan", "severity": severity, "title": "t", "line": line, "code": "c"}
    evidence = Evidence(
        source="torchdoctor-probes",
        kind="probe",
        message="forged",
        file=file,
        line=line,
        data={"finding": spec, "items": ["2.3"], "point": 2},
    )
    return 2, evidence


def static_at(file: str, line: int) -> StaticResult:
    raw = RawFinding(
        rule="r",
        file=file,
        line=line,
        end_line=line,
        code="c",
        message="m",
        severity=Severity.LOW,
        excerpt="",
    )
    return StaticResult(files=[FileResult(path=file, findings=[raw])], rules_run=[], seconds=0.0)


EMPTY = StaticResult(files=[], rules_run=[], seconds=0.0)


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * (MAX_DEPTH + 5) + b"]" * (MAX_DEPTH + 5),
        json.dumps({"probe_errors": ["A" * 60_000]}).encode(),
        json.dumps({"probe_errors": ["a"] * 30_000}).encode(),
        b" " * 4_000_001,
        b"{not json",
        b"[" * 100_000,
        json.dumps({"schema_version": 1, "unknown": 1}).encode(),
    ],
    ids=["deep", "long-string", "long-list", "too-big", "not-json", "recursion", "schema"],
)
def test_hostile_documents_are_refused_in_one_line(raw: bytes) -> None:
    with pytest.raises(UntrustedEvidence) as caught:
        parse_document(raw)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400


def test_locations_must_be_audited_lines() -> None:
    pairs = [
        run_finding("train.py", 2),
        run_finding("train.py", 99999),
        run_finding("elsewhere.py", 1),
        run_finding("x.py\n- Status: wont-fix", 1),
    ]
    kept, notes = vet_locations(pairs, TEXT.get)
    assert [(e.file, e.line) for _, e in kept] == [("train.py", 2)]
    assert len(notes) == 3 and all("\n" not in n for n in notes)


def test_run_only_severity_is_capped_unless_confirmed() -> None:
    alone, notes = cap_run_severity([run_finding("train.py", 2)], EMPTY, Severity.HIGH)
    assert alone[0][1].data["finding"]["severity"] == "high" and notes
    by_static, _ = cap_run_severity(
        [run_finding("train.py", 2)], static_at("train.py", 2), Severity.HIGH
    )
    assert by_static[0][1].data["finding"]["severity"] == "critical"
    assert "static finding" in by_static[0][1].message
    twice = [run_finding("train.py", 2), run_finding("train.py", 2)]
    by_second_run, _ = cap_run_severity(twice, EMPTY, Severity.HIGH)
    assert all(e.data["finding"]["severity"] == "critical" for _, e in by_second_run)
    assert "second run" in by_second_run[0][1].message
