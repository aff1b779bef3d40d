"""Fuzzing the untrusted inputs end to end (hypothesis, bounded to a few seconds each): random
file names (newlines, escapes, markup, invalid bytes) through a real audit, the markdown,
SARIF and JSON reports and the ledger; random harness documents through the evidence checks,
the report and the ledger. Never a crash, never an injected or altered ledger entry, never a
control sequence or live HTML in a report."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from torchdoctor.agent.audit import AuditOptions, run_audit
from torchdoctor.agent.checks.engine import StaticResult
from torchdoctor.agent.evidence.probes import probe_findings
from torchdoctor.agent.evidence.trust import UntrustedEvidence, parse_document, vet_run_evidence
from torchdoctor.agent.ledger import Ledger
from torchdoctor.agent.models import (
    AuditReport,
    Evidence,
    Finding,
    Provenance,
    Severity,
    Status,
    Summary,
    Target,
    ToolInfo,
    fingerprint,
)
from torchdoctor.agent.report import render

UNSAFE_LOAD = "import torch\nmodel = torch.load('m.pt')\n"
PIECES = [
    "\n",
    "\r",
    "\x1b[2J",
    "\x1b]52;c;cHduZWQ=\x07",
    "\x9b31m",
    "[/yellow]",
    "[bold]",
    "`",
    "```",
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "#### TD-0123456789ab — x",
    "- Status: wont-fix",
    "<!-- td-entry {} -->",
    "-->",
    "|",
    "%0A::error::",
    "\u202e",
    "é",
]
hostile_text = st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=8)), max_size=8).map(
    "".join
)
hostile_name = st.one_of(
    hostile_text.map(lambda t: os.fsencode(t.replace("/", "_").replace("\0", "_"))),
    st.binary(min_size=1, max_size=40),
).map(lambda raw: raw.replace(b"/", b"_").replace(b"\0", b"_")[:180] + b".py")
FUZZ = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def assert_inert_markdown(text: str) -> None:
    assert not any(c in text for c in ("\x1b", "\x07", "\x9b", "\r", "\u202e"))
    html = MarkdownIt("commonmark", {"html": True}).render(text)
    assert "<script" not in html and "<img" not in html


@FUZZ
@given(name=hostile_name)
def test_hostile_file_names_round_trip(name: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        (repo / "train.py").write_text(UNSAFE_LOAD)
        try:
            with open(os.path.join(os.fsencode(repo), name), "wb") as handle:
                handle.write(UNSAFE_LOAD.encode())
        except OSError:
            return  # a name this filesystem refuses (too long...)
        options = AuditOptions(target=repo, offline=True, linters=False)
        first = run_audit(options)
        second = run_audit(options)
        ledger = Ledger.read(repo / "ISSUES.md")
        ids = {f.id for f in second.report.findings}
        assert set(ledger.entries) <= ids | {f.id for f in first.report.findings}
        assert all(e.status is Status.OPEN for e in ledger.entries.values())
        assert all(f.status is Status.OPEN for f in second.report.findings)
        assert any(f.file == "train.py" for f in second.report.findings)
        assert_inert_markdown(render(second.report, "markdown"))
        assert_inert_markdown((repo / "ISSUES.md").read_text())
        for fmt in ("json", "sarif"):
            assert "\x1b" not in json.dumps(json.loads(render(second.report, fmt)))


def _document(draw: st.DrawFn) -> dict[str, Any]:
    location = {
        "file": draw(st.one_of(st.just("train.py"), hostile_text)),
        "line": draw(st.integers(min_value=-5, max_value=100_000)),
    }
    doc: dict[str, Any] = {
        "schema_version": 1,
        "tool": "torchdoctor-probes",
        "script": "train.py",
        "outcome": {"kind": "completed-steps", "detail": draw(hostile_text)},
        "mode": "train",
        "steps_completed": draw(st.integers(min_value=0, max_value=5)),
        "loss": {"steps": [0, 1], "values": [1.0, 0.5]},
    }
    if draw(st.booleans()):
        doc["nonfinite"] = {"step": 1, "phase": "loss", "module": draw(hostile_text), **location}
    if draw(st.booleans()):
        param = {"name": draw(hostile_text), **location}
        doc["gradients"] = {"grad_not_in_optimizer": [param], "never_received_grad": [param]}
    if draw(st.booleans()):
        doc["probe_errors"] = [draw(hostile_text)]
    if draw(st.booleans()):
        doc[draw(hostile_text)] = draw(hostile_text)  # an unknown field
    return doc


@settings(FUZZ, max_examples=200)
@given(doc=st.composite(_document)())
def test_hostile_harness_documents_round_trip(doc: dict[str, Any], tmp_path: Path) -> None:
    try:
        parsed = parse_document(json.dumps(doc).encode())
    except UntrustedEvidence as err:
        assert "\n" not in str(err)
        return
    sources = {"train.py": UNSAFE_LOAD}
    analysis = probe_findings(parsed, "train.py", read_source=sources.get)
    static = StaticResult(files=[], rules_run=[], seconds=0.0)
    kept, notes = vet_run_evidence(analysis.by_point(), sources.get, static, Severity.HIGH)
    for _point, evidence in kept:
        assert evidence.file in (None, "train.py")
        assert evidence.line is None or 1 <= evidence.line <= 2
        spec = evidence.data.get("finding")
        assert spec is None or spec["severity"] != "critical"
    report = _report_with(kept, notes)
    path = tmp_path / "ISSUES.md"
    path.unlink(missing_ok=True)
    Ledger.read(path).merge(report).write(path)
    assert_inert_markdown(path.read_text())
    assert_inert_markdown(render(report, "markdown"))
    assert all(e.status is Status.OPEN for e in Ledger.read(path).entries.values())


def _report_with(kept: list[tuple[int, Evidence]], notes: list[str]) -> AuditReport:
    """The findings the evidence proposes, as a report (what a reasoner would make of it)."""
    findings = [
        Finding(
            id=fingerprint(spec["rule"], evidence.file or "", spec["code"]),
            rule=spec["rule"],
            checkpoint=point,
            phase=1,
            severity=Severity(spec["severity"]),
            file=evidence.file or "train.py",
            line=evidence.line or 1,
            end_line=evidence.line or 1,
            title=spec["title"],
            evidence=[evidence],
        )
        for point, evidence in kept
        if (spec := evidence.data.get("finding"))
    ]
    return AuditReport(
        tool=ToolInfo(version="0"),
        target=Target(path="repo", kind="folder"),
        findings=findings,
        coverage=[],
        summary=Summary(
            total=len(findings),
            by_severity={},
            by_point={},
            by_status={},
            coverage={},
            files_audited=1,
            notes=notes,
        ),
        provenance=Provenance(
            python_version="3", reasoner="offline", audit_id="a", started_at="t", duration_s=0
        ),
    )
