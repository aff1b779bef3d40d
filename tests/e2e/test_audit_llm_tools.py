"""An audit whose phase reasoning calls tools: the LLM's patch verified in the sandbox.

The "model" is `tests/llm_stub_server.StubLLM`, a scripted OpenAI-compatible server on
127.0.0.1 (no hosted model can be reached from the tests). Review requests get an empty valid
answer; the phase's tool loop replays a multi-turn conversation (search, read, propose a patch)
for the one finding no codemod fixes, and the audit's fix node verifies that patch by running it
in the local sandbox. A second model keeps calling tools: the loop's bound stops it and the
audit still completes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.llm_stub_server import EMPTY_ANSWER, Reply, StubLLM
from torchdoctor.agent.audit import AuditOptions, run_audit

pytestmark = pytest.mark.slow

TRAIN = """import torch
from torch import nn

torch.manual_seed(0)
model = nn.Linear(8, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
data = torch.randn(64, 8)
target = data.sum(dim=1, keepdim=True)
for step in range(40):
    optimizer.zero_grad()
    loss = ((model.forward(data) - target) ** 2).mean()
    loss.backward()
    optimizer.step()
"""
DIFF = (
    "--- a/train.py\n+++ b/train.py\n@@ -11,1 +11,1 @@\n"
    "-    loss = ((model.forward(data) - target) ** 2).mean()\n"
    "+    loss = ((model(data) - target) ** 2).mean()\n"
)
FINDING_ID = re.compile(r"TD-[0-9a-f]{12}")


def conversation(body: dict[str, Any]) -> Reply:
    """Review requests: nothing to add. The tool loop: search, read, propose, then answer."""
    if "tools" not in body:
        return Reply.json(EMPTY_ANSWER)
    if not _about_forward(body):
        return Reply(content="nothing to fix here")
    messages = body["messages"]
    question = next(m["content"] for m in messages if m["role"] == "user")
    done = sum(1 for m in messages if m["role"] == "tool")
    [finding] = FINDING_ID.findall(question)
    script = [
        Reply.tool("search_code", {"text": ".forward("}, "call_1"),
        Reply.tool("read_file_window", {"file": "train.py", "start": 9, "end": 13}, "call_2"),
        Reply.tool("propose_fix", {"finding_id": finding, "diff": DIFF}, "call_3"),
    ]
    return script[done] if done < len(script) else Reply(content=f"{finding}: patched")


def _about_forward(body: dict[str, Any]) -> bool:
    question = next(m["content"] for m in body["messages"] if m["role"] == "user")
    return "direct-forward-call" in question


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "train.py").write_text(TRAIN)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("TORCHDOCTOR_MODEL", "stub-model")
    monkeypatch.setenv("TORCHDOCTOR_HOME", str(tmp_path / "home"))
    yield root


def audit(root: Path, run: list[str]) -> Any:
    return run_audit(AuditOptions(target=root, run=run, steps=4, fix=True, write_ledger=False))


def test_a_tool_calling_conversation_ends_in_a_patch_the_sandbox_verifies(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with StubLLM(fallback=conversation) as stub:
        monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
        outcome = audit(repo, ["python train.py"])
        tool_requests = [r for r in stub.requests if "tools" in r and _about_forward(r)]
    [finding] = [f for f in outcome.report.findings if f.rule == "direct-forward-call"]
    assert finding.fix is not None and finding.fix.origin == "llm"
    assert finding.fix.diff == DIFF
    steps = {v.step: v.ok for v in finding.fix.verification}
    assert steps["smoke-run"] and steps["executed-change"] and steps["behaviour"], steps
    assert finding.fix.verified and finding.status.value == "verified"
    assert len(tool_requests) == 4  # three tool calls, then the answer
    assert any(
        "3 tool call(s) (search_code, read_file_window, propose_fix)" in note
        and "stopped: answered" in note
        for note in outcome.report.summary.notes
    ), outcome.report.summary.notes
    assert "en/investigate" in outcome.report.provenance.extra["llm"]["templates"]


def test_a_model_that_keeps_calling_tools_is_stopped_and_the_audit_completes(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def looping(body: dict[str, Any]) -> Reply:
        if "tools" not in body:
            return Reply.json(EMPTY_ANSWER)
        return Reply.tool("rerun_check", {"file": "train.py"})

    with StubLLM(fallback=looping) as stub:
        monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
        monkeypatch.setenv("TORCHDOCTOR_LLM_LOOP_TURNS", "3")
        outcome = audit(repo, [])  # no run asked: nothing runs
        tool_requests = [r for r in stub.requests if "tools" in r and _about_forward(r)]
    [finding] = [f for f in outcome.report.findings if f.rule == "direct-forward-call"]
    assert finding.fix is None and finding.status.value == "open"
    assert len(tool_requests) == 3
    assert any("stopped: turns" in note for note in outcome.report.summary.notes), (
        outcome.report.summary.notes
    )
    assert any("stopped after 3 model requests" in note for note in outcome.report.summary.notes)
