"""Model claims are believed only when the code shows them."""

from __future__ import annotations

from torchdoctor.agent.models import Evidence, Finding, Severity, Status
from torchdoctor.agent.reasoning.llm.diffs import DiffRejected, check_diff, llm_patch
from torchdoctor.agent.reasoning.llm.schema import (
    LLMExplanation,
    LLMFinding,
    PointAnswer,
    strict_schema,
)
from torchdoctor.agent.reasoning.llm.validation import Context, locate_snippet, validate_answer

SOURCE = {
    "train.py": [
        "import torch",
        "",
        "for x, y in loader:",
        "    loss = criterion(model(x), y)",
        "    loss.backward()",
        "    optimizer.step()",
        "    print(loss.item())",
    ]
}


TOOL_HIT = Finding(
    id="TD-000000000007",
    rule="item-in-loop",
    checkpoint=6,
    phase=4,
    severity=Severity.LOW,
    title=".item() in the loop",
    file="train.py",
    line=7,
    end_line=7,
    evidence=[Evidence(source="torchdoctor-static", kind="static", message="sync")],
)
"""A rule hit on line 7: what backs the claims these tests make there."""


def ctx(point: int = 6) -> Context:
    return Context(
        point=point,
        files=["train.py"],
        read=SOURCE.get,
        native_rules=["host-sync"],
        reported=[TOOL_HIT],
        source="llm:m",
    )


def claim(**overrides: object) -> LLMFinding:
    base: dict[str, object] = {
        "checkpoint": 6,
        "item": "6.1",
        "rule": "print_sync",
        "severity": "Medium",
        "title": "print syncs",
        "file": "./train.py",
        "line": 7,
        "snippet": "print(loss.item())",
        "explanation": "blocks the host",
    }
    return LLMFinding.model_validate({**base, **overrides})


def test_snippets_are_found_within_two_lines_whitespace_normalised() -> None:
    lines = SOURCE["train.py"]
    assert locate_snippet(lines, 5, "print( loss.item())".replace("( ", "(")) == (7, 7)
    assert locate_snippet(lines, 4, "loss.backward()\n\toptimizer.step()") == (5, 6)
    assert locate_snippet(lines, 2, "print(loss.item())") is None
    assert locate_snippet(lines, 7, "  ") is None


def test_a_valid_claim_becomes_an_open_finding_with_llm_evidence() -> None:
    out = validate_answer([claim(status="fixed")], [], ctx())
    [finding] = out.findings
    assert (finding.rule, finding.file, finding.line, finding.severity) == (
        "llm-print-sync",
        "train.py",
        7,
        Severity.MEDIUM,
    )
    assert finding.status is Status.OPEN and finding.phase == 4
    assert finding.evidence[0].kind == "llm" and finding.evidence[0].data["items"] == ["6.1"]
    assert finding.id.startswith("TD-")


def test_native_rule_ids_are_kept_and_bad_fields_are_dropped_by_reason() -> None:
    out = validate_answer(
        [
            claim(rule="host-sync"),
            claim(severity="catastrophic"),
            claim(rule="!!!"),
            claim(checkpoint=0),
            claim(line=1),
            claim(file="/etc/passwd"),
        ],
        [],
        ctx(),
    )
    assert [f.rule for f in out.findings] == ["host-sync"]
    assert dict(out.dropped) == {
        "invalid-severity": 1,
        "invalid-rule-or-title": 1,
        "invalid-checkpoint": 1,
        "snippet-not-found": 1,
        "unknown-file": 1,
    }


def test_other_points_are_rerouted_and_duplicates_dropped() -> None:
    out = validate_answer([claim(checkpoint=1), claim(checkpoint=1)], [], ctx())
    assert [(f.checkpoint, f.phase) for f in out.findings] == [(1, 1)]
    assert out.rerouted == [("llm-print-sync", 1)] * 2
    assert out.dropped["duplicate"] == 1


def test_explanations_must_name_a_reported_finding() -> None:
    reported = [TOOL_HIT]
    context = Context(
        point=6,
        files=["train.py"],
        read=SOURCE.get,
        native_rules=[],
        reported=reported,
        source="llm:m",
    )
    out = validate_answer(
        [],
        [
            LLMExplanation(finding_id=reported[0].id, explanation="why"),
            LLMExplanation(finding_id="TD-nope", explanation="x"),
        ],
        context,
    )
    assert out.explanations == {reported[0].id: ["why"]}
    assert out.dropped["unknown-finding-id"] == 1


def test_diffs_must_apply_to_an_audited_file() -> None:
    good = "--- a/train.py\n+++ b/train.py\n@@ -7 +7 @@\n-    print(loss.item())\n+    pass\n"
    assert check_diff(good, ["train.py"], SOURCE.get) == good
    for bad in (
        good.replace("a/train.py", "a/other.py"),
        "just text",
        good.replace("print(loss.item())", "print(loss)"),
    ):
        try:
            check_diff(bad, ["train.py"], SOURCE.get)
        except DiffRejected:
            continue
        raise AssertionError(f"accepted {bad!r}")


def test_the_strict_schema_requires_every_key_and_allows_no_others() -> None:
    schema = strict_schema(PointAnswer)
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["explanations", "findings", "not_checked"]
    finding = schema["$defs"]["LLMFinding"]
    assert finding["additionalProperties"] is False and "status" not in finding["properties"]
    assert set(finding["required"]) == set(finding["properties"])


def test_an_llm_fix_becomes_a_patch_for_the_fix_pipeline() -> None:
    diff = "--- a/train.py\n+++ b/train.py\n@@ -7 +7 @@\n-    print(loss.item())\n+    pass\n"
    [finding] = validate_answer([claim(fix_diff=diff)], [], ctx()).findings
    patch = llm_patch(finding)
    assert patch is not None
    assert (patch.origin, patch.files, patch.rule, patch.diff) == (
        "llm",
        ["train.py"],
        "llm-print-sync",
        diff,
    )
    assert llm_patch(finding.model_copy(update={"fix": None})) is None
