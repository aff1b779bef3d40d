"""The LLM's bounded tool loop (`tool_loop.ask`), against a scripted OpenAI-compatible server.

The server (tests/llm_stub_server.py, on 127.0.0.1) is a scripted stand-in for a hosted model:
it replays multi-turn tool calls, malformed replies, slow and failing answers, so these tests
pin the loop (tools, verification of a proposed patch, each bound, each failure), not a model's
judgement. The patch is verified by the audit's own verifier (static steps: applies, parses,
the rule stops firing; no run is given here, so it is not verified by execution).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.llm_stub_server import Reply, StubLLM
from tests.llm_workspace import copy_fixture, point_requests
from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.fixing import FixBench, verify_hook
from torchdoctor.agent.reasoning.inquiry import AuditBrief, LoopBounds, ToolHooks, tool_summary
from torchdoctor.agent.reasoning.llm import OpenAIConfig
from torchdoctor.agent.reasoning.llm.reasoner import LLMReasoner
from torchdoctor.agent.reasoning.llm.tool_loop import ask
from torchdoctor.agent.reasoning.offline import OfflineReasoner

SCRIPT = "train_small.py"
DIFF = (
    "--- a/train_small.py\n+++ b/train_small.py\n@@ -19,1 +19,1 @@\n"
    "-    losses.append(loss.item())\n+    losses.append(loss.detach())\n"
)


@pytest.fixture(scope="module")
def stub() -> Iterator[StubLLM]:
    with StubLLM() as server:
        yield server


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return copy_fixture(tmp_path, SCRIPT)


def make(base_url: str, workspace: Path, **overrides: object) -> LLMReasoner:
    config = OpenAIConfig.model_validate(
        {
            "model": "stub-model",
            "base_url": base_url,
            "cache": False,
            "timeout_s": 2.0,
            "max_retries": 0,
            **overrides,
        }
    )
    return LLMReasoner(config, workspace, OfflineReasoner(), sleep=lambda _s: None)


def brief(workspace: Path) -> AuditBrief:
    results = [OfflineReasoner().reason(r) for r in point_requests(workspace).values()]
    return AuditBrief(
        target=str(workspace),
        findings=[f for r in results for f in r.findings],
        files=[SCRIPT],
    )


def test_a_multi_turn_conversation_ends_in_a_patch_the_verifier_checks(
    stub: StubLLM, workspace: Path
) -> None:
    audit = brief(workspace)
    target = next(f for f in audit.findings if f.rule == "host-sync-in-step")
    stub.push(
        Reply.tool("search_code", {"text": "loss.item()"}),
        Reply.tool("read_file_window", {"file": SCRIPT, "start": 17, "end": 20}, "call_2"),
        Reply.tool("propose_fix", {"finding_id": target.id, "diff": DIFF}, "call_3"),
        Reply(content=f"{target.id}: line 19 syncs every step; patch proposed."),
    )
    bench = FixBench(workspace, None, None, 3, EngineConfig(), [SCRIPT])
    answer = ask(
        "Fix the host sync.",
        audit,
        reasoner=make(stub.base_url, workspace),
        hooks=ToolHooks(verify_fix=verify_hook(bench)),
    )
    assert answer.stopped == "answered" and not answer.truncated
    assert [c.name for c in answer.tool_calls] == ["search_code", "read_file_window", "propose_fix"]
    assert f"{SCRIPT}:19: losses.append(loss.item())" in answer.tool_calls[0].result
    assert "19 |     losses.append(loss.item())" in answer.tool_calls[1].result
    fix = answer.proposed_fixes[target.id]
    steps = {v.step: v.ok for v in fix.verification}
    assert steps["patch-applies"] and steps["parses"] and steps["rule-cleared"]
    assert steps["smoke-run"] is False and fix.verified is False  # no run: not proven
    assert "not verified: patch-applies: ok" in answer.tool_calls[2].result
    assert answer.usage["requests"] == 4
    assert tool_summary(answer) == "search_code, read_file_window, propose_fix"
    # the tool results went back to the model, delimited, in order
    sent = [m for m in stub.requests[-1]["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in sent] == ["call_1", "call_2", "call_3"]


def test_a_model_that_keeps_calling_tools_is_stopped_by_each_bound(workspace: Path) -> None:
    looping = StubLLM(fallback=lambda _b: Reply.tool("search_code", {"text": "loss"}))
    with looping:
        reasoner = make(looping.base_url, workspace)
        turns = ask("Again.", brief(workspace), reasoner=reasoner, bounds=LoopBounds(max_turns=3))
        assert turns.stopped == "turns" and len(turns.tool_calls) == 3
        assert turns.notes == [
            "stopped after 3 model requests (the loop's limit); the answer may be incomplete"
        ]
        calls = ask(
            "Again.", brief(workspace), reasoner=reasoner, bounds=LoopBounds(max_tool_calls=2)
        )
        assert calls.stopped == "tool_calls" and len(calls.tool_calls) == 2
        looping.reset_counts()
        tokens = ask("Again.", brief(workspace), reasoner=reasoner, bounds=LoopBounds(max_tokens=1))
        assert tokens.stopped == "tokens" and looping.chat_calls == 0
        ticks = iter(range(100))
        timed = ask(
            "Again.",
            brief(workspace),
            reasoner=reasoner,
            bounds=LoopBounds(max_seconds=2),
            now=lambda: float(next(ticks)),
        )
        assert timed.stopped == "time" and timed.notes[0].startswith("stopped after 2 s")


def test_the_audit_token_budget_stops_the_loop_between_requests(workspace: Path) -> None:
    looping = StubLLM(fallback=lambda _b: Reply.tool("search_code", {"text": "loss"}))
    with looping:
        reasoner = make(looping.base_url, workspace, token_budget=9_000)
        answer = ask("Again.", brief(workspace), reasoner=reasoner)
        assert answer.stopped == "budget" and answer.text == ""
        assert answer.notes[0].startswith("the LLM could not answer: ")
        assert 1 <= len(answer.tool_calls) < 6
        assert reasoner.budget.available_tokens() < 9_000


def test_malformed_replies_are_answered_as_errors_or_end_the_loop(
    stub: StubLLM, workspace: Path
) -> None:
    bad_arguments = Reply.tool("read_file_window", {})
    assert bad_arguments.tool_calls is not None
    bad_arguments.tool_calls[0]["function"]["arguments"] = "{not json"
    stub.push(
        bad_arguments,
        Reply.tool("read_file_window", {"file": SCRIPT}, "call_2"),
        Reply.tool("run_probes", {"script": "../../etc/passwd", "args": []}, "call_3"),
        Reply(content="gave up"),
    )
    answer = ask("Read.", brief(workspace), reasoner=make(stub.base_url, workspace))
    results = [c.result for c in answer.tool_calls]
    assert "error: the arguments are not valid JSON" in results[0]
    assert "error: bad arguments" in results[1]
    assert "unavailable: no sandbox" in results[2]
    assert answer.stopped == "answered" and answer.text == "gave up"
    stub.push(Reply.raw({"choices": [{"message": {"tool_calls": [{"id": 1}]}}]}))
    broken = ask("Read.", brief(workspace), reasoner=make(stub.base_url, workspace))
    assert broken.stopped == "unavailable" and "unusable" in broken.notes[0]


def test_slow_and_failing_endpoints_end_the_loop_with_a_note(
    stub: StubLLM, workspace: Path
) -> None:
    stub.push(Reply(content="late", delay_s=1.0))
    slow = ask("Hello?", brief(workspace), reasoner=make(stub.base_url, workspace, timeout_s=0.3))
    assert slow.stopped == "unavailable" and "timed out" in slow.notes[0].lower()
    stub.push(Reply.error(503))
    failing = ask("Hello?", brief(workspace), reasoner=make(stub.base_url, workspace))
    assert failing.stopped == "unavailable"
    assert failing.notes == ["the LLM could not answer: HTTP 503 (after 1 attempt)"]
    stub.push(Reply.error(429, **{"Retry-After": "0"}), Reply(content="fine"))
    retried = ask(
        "Hello?", brief(workspace), reasoner=make(stub.base_url, workspace, max_retries=1)
    )
    assert retried.stopped == "answered" and retried.text == "fine"
    assert retried.usage["retries"] == 1
