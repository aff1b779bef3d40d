"""No crash from an odd endpoint (issue 13, item 11): every answer is validated before use.

Against the scripted OpenAI-compatible stub server on 127.0.0.1 (tests/llm_stub_server.py),
each test serves one shape real servers have been seen to send. A shape that can be read
(content as a list of parts, usage with null counts, no id) is read; one that cannot makes the
point fall back to the offline result, and a failed capability probe falls back to defaults.
The audit never dies and never loses the offline findings.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_llm_reasoner import answer, claim, make
from tests.llm_stub_server import Reply, StubLLM
from tests.llm_workspace import copy_fixture, point_requests
from torchdoctor.agent.reasoning.base import PointRequest
from torchdoctor.agent.reasoning.offline import OfflineReasoner

GOOD = answer(claim())


def completion(**fields: Any) -> dict[str, Any]:
    """A chat completion document carrying the good answer, with `fields` changed."""
    assert GOOD.content is not None
    base: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": "stub-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": GOOD.content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }
    return {**base, **fields}


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return copy_fixture(tmp_path, "train_small.py")


@pytest.fixture
def request6(workspace: Path) -> PointRequest:
    return point_requests(workspace)[6]


MODELS_SHAPES = {
    "data-null": {"object": "list", "data": None},
    "a-bare-list": [{"id": "stub-model", "max_model_len": 4096}],
    "entries-without-id": {"data": [{"name": "stub-model"}]},
    "context-as-text": {"data": [{"id": "stub-model", "max_model_len": "8192"}]},
    "not-json": "<html>models</html>",
}


@pytest.mark.parametrize("shape", sorted(MODELS_SHAPES))
def test_an_odd_models_listing_falls_back_to_the_default_context(
    workspace: Path, request6: PointRequest, shape: str
) -> None:
    with StubLLM(models_document=MODELS_SHAPES[shape]) as stub:
        stub.push(GOOD)
        reasoner = make(stub, workspace)
        assert reasoner.client.capabilities().context_tokens is None
        result = reasoner.reason(request6)
    assert [f.rule for f in result.findings if f.rule.startswith("llm-")] == [
        "llm-print-forces-sync"
    ]


def test_an_odd_capability_probe_answer_means_no_structured_outputs(
    workspace: Path, request6: PointRequest
) -> None:
    with StubLLM(probe_document={"choices": "yes"}) as stub:
        stub.push(GOOD)
        reasoner = make(stub, workspace)
        assert reasoner.client.capabilities().structured_outputs is False
        result = reasoner.reason(request6)
    assert any(f.rule == "llm-print-forces-sync" for f in result.findings)


READABLE = {
    "content-as-parts": completion(
        choices=[
            {
                "index": 0,
                "message": {"role": "assistant", "content": [{"type": "text", "text": "{}"}]},
                "finish_reason": "stop",
            }
        ]
    ),
    "usage-with-nulls": completion(usage={"prompt_tokens": None, "completion_tokens": None}),
    "no-id-created-or-model": {
        k: v for k, v in completion().items() if k not in ("id", "created", "model")
    },
    "unknown-finish-reason": completion(
        choices=[{**completion()["choices"][0], "finish_reason": "eos_token"}]
    ),
}


@pytest.mark.parametrize("shape", sorted(READABLE))
def test_readable_variations_are_read(workspace: Path, request6: PointRequest, shape: str) -> None:
    document = READABLE[shape]
    if shape == "content-as-parts":
        assert GOOD.content is not None
        document["choices"][0]["message"]["content"][0]["text"] = GOOD.content
    with StubLLM() as stub:
        stub.push(Reply.raw(document))
        result = make(stub, workspace).reason(request6)
    assert any(f.rule == "llm-print-forces-sync" for f in result.findings), shape


UNREADABLE = {
    "choices-null": completion(choices=None),
    "message-missing": completion(choices=[{"index": 0, "finish_reason": "stop"}]),
    "a-string-body": "the model is warming up",
    "tool-call-without-function": completion(
        choices=[
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": [{"id": "x"}]},
                "finish_reason": "tool_calls",
            }
        ]
    ),
}


@pytest.fixture
def unreadable_stub() -> Iterator[StubLLM]:
    with StubLLM() as stub:
        yield stub


@pytest.mark.parametrize("shape", sorted(UNREADABLE))
def test_unreadable_answers_leave_the_offline_result(
    workspace: Path, request6: PointRequest, unreadable_stub: StubLLM, shape: str
) -> None:
    unreadable_stub.push(*[Reply.raw(UNREADABLE[shape])] * 4)
    result = make(unreadable_stub, workspace, max_retries=0).reason(request6)
    offline = OfflineReasoner().reason(request6)
    assert [f.id for f in result.findings] == [f.id for f in offline.findings]
    assert any("unusable" in note or "unavailable" in note for note in result.notes), result.notes


def test_a_whole_audit_survives_the_models_listing_that_crashed_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchdoctor.agent.audit import AuditOptions, run_audit

    target = copy_fixture(tmp_path, "train_small.py") / "train_small.py"
    offline = run_audit(AuditOptions(target=target, write_ledger=False, offline=True)).report
    with StubLLM(models_document={"object": "list", "data": None}) as stub:
        monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("TORCHDOCTOR_MODEL", stub.model)
        report = run_audit(AuditOptions(target=target, write_ledger=False)).report
    assert report.provenance.reasoner.startswith("llm:")
    assert {f.id for f in offline.findings} <= {f.id for f in report.findings}
