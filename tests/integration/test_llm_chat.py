"""Review-session chat turns with tools, against a scripted OpenAI-compatible server.

The server (tests/llm_stub_server.py) is a scripted stand-in for a hosted model: it replays the
tool calls and answers each test scripts, so these tests pin the tool loop (execution, bounds,
delimiting, unverified fixes), not a model's judgement.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.llm_stub_server import Reply, StubLLM
from tests.llm_workspace import copy_fixture, point_requests
from torchdoctor.agent.models import AuditReport, Provenance, Summary, Target, ToolInfo
from torchdoctor.agent.reasoning.inquiry import ProbeOutcome, ToolHooks
from torchdoctor.agent.reasoning.llm import OpenAIConfig
from torchdoctor.agent.reasoning.llm.chat import ChatSession, chat_turn
from torchdoctor.agent.reasoning.llm.reasoner import LLMReasoner
from torchdoctor.agent.reasoning.offline import OfflineReasoner


@pytest.fixture
def stub() -> Iterator[StubLLM]:
    with StubLLM() as server:
        yield server


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return copy_fixture(tmp_path, "train_small.py")


def make(stub: StubLLM, workspace: Path, **overrides: object) -> LLMReasoner:
    config = OpenAIConfig.model_validate(
        {
            "model": stub.model,
            "base_url": stub.base_url,
            "cache": False,
            "timeout_s": 0.5,
            "max_retries": 0,
            "max_tool_calls": 3,
            **overrides,
        }
    )
    return LLMReasoner(config, workspace, OfflineReasoner(), sleep=lambda _s: None)


def session(workspace: Path, lang: str = "en") -> ChatSession:
    results = [OfflineReasoner().reason(r) for r in point_requests(workspace).values()]
    findings = [f for r in results for f in r.findings]
    coverage = [c for r in results for c in r.coverage]
    report = AuditReport(
        tool=ToolInfo(version="test"),
        target=Target(path=str(workspace / "train_small.py"), kind="file"),
        findings=findings,
        coverage=coverage,
        summary=Summary(
            total=len(findings),
            by_severity={},
            by_point={},
            by_status={},
            coverage={},
            files_audited=1,
        ),
        provenance=Provenance(
            python_version="3.11",
            reasoner="offline",
            audit_id="a1",
            started_at="2026-01-01T00:00:00Z",
            duration_s=0.1,
        ),
    )
    return ChatSession(report=report, lang=lang, files=["train_small.py"])


def test_a_tool_call_reads_a_delimited_window_then_the_model_answers(
    stub: StubLLM, workspace: Path
) -> None:
    stub.push(
        Reply.tool("read_file_window", {"file": "train_small.py", "start": 19, "end": 20}),
        Reply(content="Line 19 calls loss.item() every step."),
    )
    chat = session(workspace)
    answer = chat_turn(chat, "Why is step time high?", reasoner=make(stub, workspace))
    assert answer.text == "Line 19 calls loss.item() every step."
    assert [c.name for c in answer.tool_calls] == ["read_file_window"]
    result = answer.tool_calls[0].result
    assert "19 |     losses.append(loss.item())" in result
    assert result.startswith("<<<DATA-") and result.endswith(">>>")
    tool_message = stub.requests[-1]["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["tool_call_id"] == "call_1"
    assert chat.history[-2:] == [
        {"role": "user", "content": "Why is step time high?"},
        {"role": "assistant", "content": answer.text},
    ]
    assert answer.usage["requests"] == 2


def test_tool_call_loops_are_cut_at_the_bound(stub: StubLLM, workspace: Path) -> None:
    looping = StubLLM(fallback=lambda _b: Reply.tool("rerun_check", {"file": "train_small.py"}))
    with looping:
        answer = chat_turn(
            session(workspace), "Check again, forever.", reasoner=make(looping, workspace)
        )
        assert answer.truncated is True
        assert len(answer.tool_calls) == 3 and looping.chat_calls == 4
        assert answer.stopped == "tool_calls"
        assert answer.notes == [
            "stopped after 3 tool calls (the per-turn limit); the answer may be incomplete"
        ]
        assert "host-sync-in-step medium line 19" in answer.tool_calls[0].result


def test_probes_are_unavailable_without_a_sandbox_and_run_with_one(
    stub: StubLLM, workspace: Path
) -> None:
    for _ in range(2):
        stub.push(
            Reply.tool("run_probes", {"script": "train_small.py", "args": ["--lr", "1"]}),
            Reply(content="done"),
        )
    reasoner = make(stub, workspace)
    without = chat_turn(session(workspace), "Measure syncs.", reasoner=reasoner)
    assert "unavailable: no sandbox was given" in without.tool_calls[0].result
    seen: list[tuple[str, list[str]]] = []

    def probes(script: str, args: list[str]) -> ProbeOutcome:
        seen.append((script, args))
        return ProbeOutcome(text="2 syncs per step")

    hooks = ToolHooks(run_probes=probes)
    with_probe = chat_turn(session(workspace), "Measure syncs.", reasoner=reasoner, hooks=hooks)
    assert "2 syncs per step" in with_probe.tool_calls[0].result
    assert seen == [("train_small.py", ["--lr", "1"])]


def test_a_proposed_fix_is_recorded_unverified_and_bad_ones_are_rejected(
    stub: StubLLM, workspace: Path
) -> None:
    chat = session(workspace)
    target = next(f for f in chat.report.findings if f.rule == "host-sync-in-step")
    diff = (
        "--- a/train_small.py\n+++ b/train_small.py\n@@ -19,1 +19,1 @@\n"
        "-    losses.append(loss.item())\n+    losses.append(loss.detach())\n"
    )
    stub.push(
        Reply.tool("propose_fix", {"finding_id": target.id, "diff": diff}),
        Reply.tool("propose_fix", {"finding_id": "TD-000000000000", "diff": diff}, "call_2"),
        Reply.tool(
            "propose_fix",
            {"finding_id": target.id, "diff": diff.replace("loss.item()", "nothing()")},
            "call_3",
        ),
        Reply(content="Proposed."),
    )
    answer = chat_turn(chat, "Fix the sync.", reasoner=make(stub, workspace))
    fix = answer.proposed_fixes[target.id]
    assert fix.origin == "llm" and fix.verified is False and fix.diff == diff
    results = [c.result for c in answer.tool_calls]
    assert "recorded as an unverified proposal" in results[0]
    assert "no finding 'TD-000000000000'" in results[1]
    assert "rejected: a hunk's old lines do not occur" in results[2]
    assert all(f.status.value == "open" for f in chat.report.findings)


def test_unknown_tools_and_files_outside_the_audit_are_refused(
    stub: StubLLM, workspace: Path
) -> None:
    (workspace.parent / "secret.txt").write_text("API_KEY=abc\n")
    stub.push(
        Reply.tool("read_file_window", {"file": "../secret.txt", "start": 1, "end": 5}),
        Reply.tool("shell", {"cmd": "id"}, "call_2"),
        Reply(content="ok"),
    )
    answer = chat_turn(session(workspace), "Read it.", reasoner=make(stub, workspace))
    assert "is not an audited file" in answer.tool_calls[0].result
    assert "API_KEY" not in answer.tool_calls[0].result
    assert "unknown tool 'shell'" in answer.tool_calls[1].result


def test_an_unreachable_endpoint_gives_a_note_not_an_exception(
    stub: StubLLM, workspace: Path
) -> None:
    stub.push(Reply.error(503))
    answer = chat_turn(session(workspace), "Hello?", reasoner=make(stub, workspace))
    assert answer.text == ""
    assert answer.notes == ["the LLM could not answer: HTTP 503 (after 1 attempt)"]


def test_a_french_session_gets_the_french_prompt(stub: StubLLM, workspace: Path) -> None:
    stub.push(Reply(content="Bonjour."))
    reasoner = make(stub, workspace)
    chat_turn(session(workspace, lang="fr"), "Pourquoi ?", reasoner=reasoner)
    system = stub.requests[-1]["messages"][0]["content"]
    assert "Répondez en français." in system
    assert "fr/chat" in reasoner.provenance()["templates"]
