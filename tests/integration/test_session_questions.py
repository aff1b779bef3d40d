"""Free-text questions in a review session go to the LLM's tool loop; without an LLM the
session says so and suggests the commands. Against the scripted OpenAI-compatible stub server
(tests/llm_stub_server.py), which replays the tool calls and answers each test scripts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_llm_chat import session as chat_session
from tests.llm_stub_server import Reply, StubLLM
from tests.llm_workspace import copy_fixture
from torchdoctor.agent.session.engine import SessionEngine
from torchdoctor.agent.session.local import LocalDriver
from torchdoctor.agent.session.models import DiffBlock, SessionState, TextBlock
from torchdoctor.agent.session.questions import llm_answerer


@pytest.fixture
def stub() -> Iterator[StubLLM]:
    with StubLLM() as server:
        yield server


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return copy_fixture(tmp_path, "train_small.py")


@pytest.fixture
def llm_env(stub: StubLLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("TORCHDOCTOR_MODEL", stub.model)
    monkeypatch.setenv("TORCHDOCTOR_LLM_MAX_RETRIES", "0")
    monkeypatch.setenv("TORCHDOCTOR_LLM_CACHE_DIR", str(tmp_path / "cache"))


def engine_on(workspace: Path, offline: bool = False) -> SessionEngine:
    return SessionEngine(LocalDriver(workspace), llm_answerer(workspace, offline=offline))


def test_a_question_is_answered_by_the_tool_loop_with_the_earlier_turns(
    stub: StubLLM, workspace: Path, llm_env: None
) -> None:
    report = chat_session(workspace).report
    finding = next(f for f in report.findings if f.rule == "host-sync-in-step")
    stub.push(
        Reply.tool("read_file_window", {"file": "train_small.py", "start": 19, "end": 20}),
        Reply(content="Line 19 calls loss.item() every step."),
    )
    engine = engine_on(workspace)
    state = SessionState(report=report, audit_id="a1")
    earlier = engine.handle(state, "findings", []).messages
    turn = engine.handle(state, "Why is step time high?", earlier)
    answer = turn.messages[1].blocks
    assert answer[0] == TextBlock(text="Line 19 calls loss.item() every step.")
    sent = stub.requests[0]["messages"]
    assert sent[1]["role"] == "user" and sent[1]["content"] == "findings"
    assert finding.id in sent[2]["content"]  # the earlier table, as text

    diff = (
        "--- a/train_small.py\n+++ b/train_small.py\n@@ -19 +19 @@\n"
        "-    losses.append(loss.item())\n+    losses.append(loss.detach())\n"
    )
    stub.push(
        Reply.tool("propose_fix", {"finding_id": finding.id, "diff": diff}),
        Reply(content="Here is a patch."),
    )
    proposed = engine.handle(state, "Can you fix it?", []).messages[1].blocks
    texts = [b.text for b in proposed if isinstance(b, TextBlock)]
    diffs = [b for b in proposed if isinstance(b, DiffBlock)]
    assert texts[0] == "Here is a patch."
    assert len(diffs) == 1 and "loss.detach()" in diffs[0].diff
    assert finding.id in diffs[0].title and "not verified" in diffs[0].title
    assert "(unverified): `fix ID` verifies one" in texts[1]


def test_without_an_llm_the_session_says_so_in_its_language(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    report = chat_session(workspace).report
    engine = engine_on(workspace)
    assert engine.answerer is None
    english = engine.handle(SessionState(report=report), "why?", []).messages[1].blocks[0]
    assert isinstance(english, TextBlock) and "No LLM is configured" in english.text
    french = engine.handle(SessionState(report=report, lang="fr"), "pourquoi ?", [])
    block = french.messages[1].blocks[0]
    assert isinstance(block, TextBlock) and block.text.startswith("Aucun LLM")


def test_offline_sessions_never_call_the_model(
    stub: StubLLM, workspace: Path, llm_env: None
) -> None:
    assert llm_answerer(workspace, offline=True) is None
    assert stub.chat_calls == 0
