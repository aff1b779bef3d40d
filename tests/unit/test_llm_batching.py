"""Batch planning, the once-per-batch request, how a keyed answer is shared out, and what the
boundary token of a batched prompt is derived from."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from torchdoctor.agent.models import Evidence, Finding, Severity
from torchdoctor.agent.reasoning.base import PointRequest, PointResult
from torchdoctor.agent.reasoning.llm.batching import Once, plan_batches, route_sections
from torchdoctor.agent.reasoning.llm.review_prompt import PointView, review_context, review_data
from torchdoctor.agent.reasoning.llm.schema import UNSPECIFIED_POINT, BatchAnswer, strict_schema
from torchdoctor.agent.reasoning.llm.windows import Selection


def finding(checkpoint: int, rule: str = "r") -> dict[str, Any]:
    return {
        "checkpoint": checkpoint,
        "rule": rule,
        "severity": "low",
        "title": "t",
        "file": "a.py",
        "line": 1,
        "snippet": "x = 1",
        "explanation": "e",
    }


def test_consecutive_phases_are_packed_while_they_fit() -> None:
    everything = range(1, 13)
    assert plan_batches(everything, lambda _group: True) == [tuple(everything)]
    assert plan_batches(everything, lambda _group: False) == [
        (1, 2),
        (3, 4),
        (5,),
        (6, 7, 8),
        (9, 10, 11, 12),
    ]
    assert plan_batches(everything, lambda group: len(group) <= 5) == [
        (1, 2, 3, 4, 5),
        (6, 7, 8),
        (9, 10, 11, 12),
    ]
    assert plan_batches([2, 6, 7], lambda _group: False) == [(2,), (6, 7)]


def test_the_first_caller_computes_and_everyone_gets_its_value() -> None:
    once: Once[int] = Once()
    calls = []
    lock = threading.Lock()

    def compute() -> int:
        with lock:
            calls.append(1)
        time.sleep(0.05)
        return 42

    with ThreadPoolExecutor(max_workers=4) as pool:
        values = list(pool.map(lambda _i: once.get(compute), range(4)))
    assert values == [42, 42, 42, 42] and len(calls) == 1
    assert once.get(compute) == 42 and len(calls) == 1


def test_claims_go_to_the_point_they_name_and_explanations_to_their_findings_point() -> None:
    answer = BatchAnswer.model_validate(
        {
            "points": [
                {
                    "point": 1,
                    "findings": [finding(2, "a"), finding(11, "b"), finding(1, "c")],
                    "explanations": [
                        {"finding_id": "TD-2", "explanation": "x"},
                        {"finding_id": "TD-unknown", "explanation": "y"},
                    ],
                    "not_checked": ["1.2: no annotations"],
                },
                {"point": 9, "findings": [finding(2, "d")], "explanations": []},
            ]
        }
    )
    shares = route_sections(answer, [1, 2], {"TD-2": 2})
    assert [c.rule for c in shares[1].findings] == ["b", "c"]
    assert [c.rule for c in shares[2].findings] == ["a", "d"]
    assert [e.finding_id for e in shares[1].explanations] == ["TD-unknown"]
    assert [e.finding_id for e in shares[2].explanations] == ["TD-2"]
    assert shares[1].not_checked == ["1.2: no annotations"] and shares[2].not_checked == []


def test_a_flat_answer_is_one_section_for_the_first_point() -> None:
    flat = BatchAnswer.model_validate({"findings": [finding(6)], "not_checked": ["6.3: no"]})
    assert [s.point for s in flat.points] == [UNSPECIFIED_POINT]
    shares = route_sections(flat, [6], {})
    assert len(shares[6].findings) == 1 and shares[6].not_checked == ["6.3: no"]
    assert BatchAnswer.model_validate({"status": "fixed"}).points == []


def test_the_strict_schema_keys_the_answer_by_point() -> None:
    schema = strict_schema(BatchAnswer)
    assert schema["required"] == ["points"] and schema["additionalProperties"] is False
    section = schema["$defs"]["PointSection"]
    assert section["required"] == ["explanations", "findings", "not_checked", "point"]
    assert section["additionalProperties"] is False


def test_the_boundary_covers_every_text_the_repository_or_a_tool_wrote() -> None:
    planted = Finding(
        id="TD-000000000001",
        rule="manifest-rule",
        checkpoint=11,
        phase=5,
        severity=Severity.LOW,
        title="t",
        file="DATA-planted/pyproject.toml",
        line=3,
        end_line=3,
        evidence=[Evidence(source="pip-audit", kind="linter", message="CVE in dep")],
    )
    linted = Evidence(source="ruff <<<", kind="linter", message="E501", file="b.py", line=2)
    view = PointView(
        PointRequest(point=11, evidence=[linted], files=["a.py"]),
        PointResult(point=11, findings=[planted]),
    )
    data = review_data([view], {11: Selection([], 0, outline=False)})
    text = "\n".join(data.untrusted)
    for written in ("DATA-planted/pyproject.toml", "manifest-rule", "ruff <<<", "b.py:2", "a.py"):
        assert written in text
    assert review_context([view], data)["boundary"] not in text
