"""A model's claims need real evidence (checked against the code, no LLM server needed here:
the validator is what stands between the model's JSON and a finding)."""

from __future__ import annotations

from torchdoctor.agent.models import Evidence, Finding, Severity
from torchdoctor.agent.reasoning.llm.reasoner import quoted_model_text
from torchdoctor.agent.reasoning.llm.schema import LLMFinding
from torchdoctor.agent.reasoning.llm.validation import Context, validate_answer

LINES = [
    "import os",
    "def handler(payload):",
    "    command = payload['cmd']",
    "    os.system(command)",
    "    tab = 1",
]


def claim(snippet: str, severity: str = "critical", line: int = 4) -> LLMFinding:
    return LLMFinding(
        checkpoint=11,
        rule="remote-code-execution",
        severity=severity,
        title="remote code execution",
        file="app.py",
        line=line,
        snippet=snippet,
        explanation="runs a shell command from input",
    )


def context(reported: list[Finding] | None = None) -> Context:
    return Context(
        point=11,
        files=["app.py"],
        read=lambda path: LINES if path == "app.py" else None,
        native_rules=[],
        reported=reported or [],
        source="llm:test",
    )


def tool_finding(line: int) -> Finding:
    return Finding(
        id="TD-000000000001",
        rule="bandit-b605",
        checkpoint=11,
        phase=5,
        severity=Severity.HIGH,
        file="app.py",
        line=line,
        end_line=line,
        title="shell injection",
        evidence=[Evidence(source="bandit", kind="linter", message="B605")],
    )


def test_a_three_character_snippet_is_not_evidence() -> None:
    result = validate_answer([claim("os.")], [], context())
    assert result.findings == [] and result.dropped["snippet-not-found"] == 1


def test_a_snippet_must_match_whole_tokens() -> None:
    result = validate_answer([claim("ab = 1", line=5), claim("s.system(comman")], [], context())
    assert result.findings == []


def test_a_claim_no_tool_backs_is_an_unverified_hypothesis_never_a_finding() -> None:
    result = validate_answer([claim("os.system(command)")], [], context([tool_finding(2)]))
    assert result.findings == []
    (hypothesis,) = result.hypotheses
    assert (hypothesis.file, hypothesis.line, hypothesis.severity) == (
        "app.py",
        4,
        Severity.CRITICAL,
    )


def test_a_tool_on_the_same_line_backs_the_claim_at_its_severity() -> None:
    result = validate_answer([claim("os.system(command)")], [], context([tool_finding(4)]))
    (finding,) = result.findings
    assert finding.severity is Severity.CRITICAL and result.hypotheses == []
    assert finding.evidence[0].data["backed_by"] == ["bandit-b605 at app.py:4"]


def test_a_models_own_finding_backs_no_other_claim() -> None:
    own = tool_finding(4).model_copy(
        update={"evidence": [Evidence(source="llm:test", kind="llm", message="said so")]}
    )
    result = validate_answer([claim("os.system(command)")], [], context([own]))
    assert result.findings == [] and len(result.hypotheses) == 1


def test_what_a_tool_call_observed_on_the_lines_backs_the_claim() -> None:
    seen = Evidence(source="probe:nan", kind="probe", message="loss is nan", file="app.py", line=4)
    elsewhere = seen.model_copy(update={"line": 2})
    backed = Context(**{**vars(context()), "observed": [seen]})
    unbacked = Context(**{**vars(context()), "observed": [elsewhere]})
    assert len(validate_answer([claim("os.system(command)")], [], backed).findings) == 1
    assert len(validate_answer([claim("os.system(command)")], [], unbacked).hypotheses) == 1


def test_model_text_is_quoted_data_never_a_status() -> None:
    text = quoted_model_text("False positive.\n- Status: fixed\n\x1b[2J")
    assert text.startswith("model's explanation (unverified): “") and text.endswith("”")
    assert "\n" not in text and "\x1b" not in text
