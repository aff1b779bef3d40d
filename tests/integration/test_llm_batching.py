"""Points batched into few requests, against the scripted OpenAI-compatible server on 127.0.0.1.

The server (tests/llm_stub_server.py) stands in for a hosted model; these tests pin how many
requests an audit makes, how a batched answer is shared out between points, and that a batch
that fails degrades every point it covers to the offline result.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from langchain_core.runnables import RunnableConfig

from tests.llm_stub_server import Reply, StubLLM, tokens
from tests.llm_workspace import FIXTURES, copy_fixture, point_requests
from torchdoctor.agent.checklist import PHASES
from torchdoctor.agent.context import AuditContext
from torchdoctor.agent.options import AuditOptions
from torchdoctor.agent.reasoning.base import PointRequest, PointResult
from torchdoctor.agent.reasoning.llm import OpenAIConfig
from torchdoctor.agent.reasoning.llm.reasoner import LLMReasoner
from torchdoctor.agent.reasoning.offline import OfflineReasoner
from torchdoctor.agent.studio import graph
from torchdoctor.agent.workspace import load_workspace

ASKED = re.compile(r"^Review checklist points? ([\d, ]+)\.", re.MULTILINE)


@pytest.fixture
def stub() -> Iterator[StubLLM]:
    with StubLLM(context_length=32_768) as server:
        yield server


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return copy_fixture(tmp_path, "train_small.py")


@pytest.fixture
def requests_(workspace: Path) -> dict[int, PointRequest]:
    return point_requests(workspace)


def make(stub: StubLLM, workspace: Path, **overrides: Any) -> LLMReasoner:
    settings: dict[str, Any] = {
        "model": stub.model,
        "base_url": stub.base_url,
        "cache_dir": workspace.parent / "cache",
        "timeout_s": 2.0,
        "backoff_base_s": 0.01,
        "max_retries": 0,
    }
    config = OpenAIConfig(**{**settings, **overrides})
    return LLMReasoner(config, workspace, OfflineReasoner(), sleep=lambda _s: None)


def walk(reasoner: LLMReasoner, requests: dict[int, PointRequest]) -> dict[int, PointResult]:
    """As the audit graph does: prepare, then phases in order, a phase's points in parallel."""
    reasoner.prepare(requests)
    results: dict[int, PointResult] = {}
    with ThreadPoolExecutor(max_workers=4) as pool:
        for phase in PHASES:
            batch = [requests[p] for p in phase.points]
            results.update(zip(phase.points, pool.map(reasoner.reason, batch), strict=True))
    return results


def reviews(stub: StubLLM) -> list[dict[str, Any]]:
    """The review requests the stub received (not the capability probe)."""
    return [r for r in stub.requests if ASKED.search(r["messages"][-1]["content"])]


def asked(request: dict[str, Any]) -> list[int]:
    found = ASKED.search(request["messages"][-1]["content"])
    assert found is not None
    return [int(p) for p in found.group(1).split(",")]


def test_a_small_audit_is_one_request_for_all_twelve_points(
    stub: StubLLM, workspace: Path, requests_: dict[int, PointRequest]
) -> None:
    reasoner = make(stub, workspace)
    results = walk(reasoner, requests_)
    assert stub.chat_calls == 1
    assert asked(stub.requests[-1]) == list(range(1, 13))
    assert reasoner.provenance()["batches"] == [list(range(1, 13))]
    assert sum(r.usage.get("requests", 0) for r in results.values()) == 1
    assert results[1].usage["prompt_tokens"] > 0
    assert (
        "points 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12: reasoned over together"
        in (results[1].notes[-1])
    )
    user = stub.requests[-1]["messages"][1]["content"]
    assert user.count("losses.append(loss.item())") == 1, "each code line is sent once"
    for point, result in results.items():
        offline = OfflineReasoner().reason(requests_[point])
        assert [f.id for f in result.findings] == [f.id for f in offline.findings]
        assert not any("not reasoned over" in n for n in result.notes)


def test_a_batched_answer_is_shared_out_by_point(
    stub: StubLLM, workspace: Path, requests_: dict[int, PointRequest]
) -> None:
    reported_4 = OfflineReasoner().reason(requests_[4]).findings[0]
    print_claim = {
        "checkpoint": 6,
        "item": "6.1",
        "rule": "print-forces-sync",
        "severity": "medium",
        "title": "printing a CUDA scalar every step synchronises the device",
        "file": "train_small.py",
        "line": 20,
        "snippet": 'print(f"step {step}: loss {loss.item():.4f}")',
        "explanation": "loss.item() blocks the host until the kernel queue drains.",
        "fix_diff": "",
    }
    hallucinated = {**print_claim, "rule": "ghost", "snippet": "torch.cuda.synchronize()"}
    stub.push(
        Reply.json(
            {
                "points": [
                    {
                        "point": 1,
                        "findings": [print_claim, hallucinated],
                        "explanations": [
                            {"finding_id": reported_4.id, "explanation": "grads pile up"}
                        ],
                        "not_checked": ["1.2: no annotations to judge"],
                    },
                    {"point": 6, "findings": [], "explanations": [], "not_checked": []},
                ]
            }
        )
    )
    results = walk(make(stub, workspace), requests_)
    assert stub.chat_calls == 1
    added = [f for f in results[6].findings if f.rule.startswith("llm-")]
    assert [(f.rule, f.checkpoint, f.line) for f in added] == [("llm-print-forces-sync", 6, 20)]
    assert results[6].usage["llm_claims_dropped"] == 1
    assert any("snippet-not-found: 1" in n for n in results[6].notes)
    assert not any("re-routed" in n for r in results.values() for n in r.notes)
    explained = next(f for f in results[4].findings if f.id == reported_4.id)
    # model text is quoted data, attributed and marked unverified (never an instruction)
    assert explained.evidence[-1].kind == "llm" and explained.evidence[-1].message == (
        "model's explanation (unverified): “grads pile up”"
    )
    assert any("could not check: 1.2: no annotations" in n for n in results[1].notes)
    assert {c.item: c.verdict for c in results[6].coverage}["6.1"] == "fail"


def test_a_large_audit_is_split_along_phases_into_at_most_five_requests(tmp_path: Path) -> None:
    source = (FIXTURES / "train_small.py").read_text(encoding="utf-8")
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    for index in range(80):
        (workspace / f"train_{index:02d}.py").write_text(source, encoding="utf-8")
    requests = point_requests(workspace)
    with StubLLM(context_length=32_768) as stub:
        results = walk(make(stub, workspace), requests)
        assert 1 < stub.chat_calls <= len(PHASES)
        batches = [asked(r) for r in reviews(stub)]
    assert [p for batch in batches for p in batch] == list(range(1, 13))
    starts = {phase.points[0] for phase in PHASES}
    assert all(batch[0] in starts for batch in batches), "phases are never split"
    assert all(not any("not reasoned over" in n for n in r.notes) for r in results.values())


@pytest.mark.parametrize(
    ("failure", "settings", "reason"),
    [
        (Reply.error(500), {}, "endpoint unavailable (HTTP 500"),
        (None, {"token_budget": 2_000}, "budget exhausted"),
    ],
)
def test_a_failed_batch_degrades_every_point_it_covers(
    workspace: Path,
    requests_: dict[int, PointRequest],
    failure: Reply | None,
    settings: dict[str, Any],
    reason: str,
) -> None:
    with StubLLM(context_length=32_768) as stub:
        if failure is not None:
            stub.push(failure)
        reasoner = make(stub, workspace, **settings)
        results = walk(reasoner, requests_)
        assert stub.chat_calls == (1 if failure is not None else 0)
    for point, result in results.items():
        assert result.findings == OfflineReasoner().reason(requests_[point]).findings
        assert result.notes[-1].startswith(f"point {point}: not reasoned over by the LLM: {reason}")
    assert set(reasoner.provenance()["degraded_points"]) == {str(p) for p in range(1, 13)}


def test_an_unchanged_re_run_makes_no_request(
    stub: StubLLM, workspace: Path, requests_: dict[int, PointRequest]
) -> None:
    first = walk(make(stub, workspace), requests_)
    assert stub.chat_calls == 1
    stub.reset_counts()
    again = make(stub, workspace)
    second = walk(again, point_requests(workspace))
    assert stub.http_calls == 0
    assert {p: r.findings for p, r in second.items()} == {p: r.findings for p, r in first.items()}
    assert again.provenance()["cache_hits"] == 1 and again.provenance()["prompt_tokens"] == 0


def test_a_request_that_was_not_prepared_is_a_request_of_its_own(
    stub: StubLLM, workspace: Path, requests_: dict[int, PointRequest]
) -> None:
    reasoner = make(stub, workspace, cache=False)
    reasoner.prepare(requests_)
    changed = requests_[6].model_copy(update={"notes": ["gathered again"]})
    reasoner.reason(changed)
    assert asked(stub.requests[-1]) == [6]
    reasoner.reason(requests_[6])
    assert asked(stub.requests[-1]) == list(range(1, 13))
    assert stub.chat_calls == 2


def test_the_audit_graph_prepares_the_reasoner(stub: StubLLM, workspace: Path) -> None:
    context = AuditContext(workspace=load_workspace(workspace), reasoner=make(stub, workspace))
    options = AuditOptions(target=workspace, write_ledger=False)
    config: RunnableConfig = {"recursion_limit": 1000}
    state = graph.invoke({"audit_id": "audit-batched", "options": options}, config, context=context)
    assert stub.chat_calls == 1
    assert state["usage"]["requests"] == 1
    assert len(state["coverage"]) == 50


def test_a_small_context_gets_phase_batches_with_answers_fitted_to_it(
    workspace: Path, requests_: dict[int, PointRequest]
) -> None:
    with StubLLM(context_length=6_000) as stub:
        results = walk(make(stub, workspace), requests_)
        sent = reviews(stub)
    assert [asked(r) for r in sent] == [list(phase.points) for phase in PHASES]
    wanted = [2048 * len(phase.points) for phase in PHASES]
    limits = [r["max_tokens"] for r in sent]
    assert limits[:3] == wanted[:3]
    assert all(2048 <= limit < want for limit, want in zip(limits[3:], wanted[3:], strict=True))
    for request in sent:
        prompt = tokens(sum(len(m["content"]) for m in request["messages"]))
        assert prompt + request["max_tokens"] <= 6_000
    assert all(not any("not reasoned over" in n for n in r.notes) for r in results.values())


def test_a_batch_answer_is_bounded_by_what_the_token_budget_leaves(
    stub: StubLLM, workspace: Path, requests_: dict[int, PointRequest]
) -> None:
    walk(make(stub, workspace, cache=False), requests_)
    prompt = tokens(sum(len(m["content"]) for m in reviews(stub)[-1]["messages"]))
    results = walk(make(stub, workspace, cache=False, token_budget=prompt + 3_000), requests_)
    assert reviews(stub)[-1]["max_tokens"] == 3_000
    assert all(not any("not reasoned over" in n for n in r.notes) for r in results.values())


def test_a_dead_endpoint_costs_the_plan_probe_and_one_batch_then_is_not_called(
    workspace: Path, requests_: dict[int, PointRequest]
) -> None:
    sleeps: list[float] = []
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        config = OpenAIConfig(
            model="dead-model",
            base_url=f"http://127.0.0.1:{closed.getsockname()[1]}/v1",
            cache=False,
            timeout_s=1.0,
            max_retries=1,
            backoff_base_s=0.01,
            batch_tokens=0,
        )
        reasoner = LLMReasoner(config, workspace, OfflineReasoner(), sleep=sleeps.append)
        results = walk(reasoner, requests_)
    assert len(sleeps) == 2, "one retry for the planning probe, one for the first batch"
    for result in results.values():
        assert "not reasoned over by the LLM: endpoint unavailable" in result.notes[-1]
    assert results[12].notes[-1].endswith("(not called again after 2 consecutive failures)")
