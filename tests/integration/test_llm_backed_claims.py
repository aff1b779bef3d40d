"""A model's claims become findings only when tool evidence backs them; the rest are kept as
unverified hypotheses, and what the model merely says in its answer is never a finding.

The "model" is `tests/llm_stub_server.StubLLM`, a scripted OpenAI-compatible server on
127.0.0.1: it replays a point's review answer and the tool loop's calls, each with one claim
that tool evidence backs (a rule hit, a probe run's observation) and one nothing backs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_llm_reasoner import answer, claim
from tests.llm_stub_server import EMPTY_ANSWER, Reply, StubLLM
from tests.llm_workspace import copy_fixture, point_requests
from torchdoctor.agent.audit import AuditOptions, run_audit
from torchdoctor.agent.models import Evidence
from torchdoctor.agent.reasoning.inquiry import AuditBrief, LoopBounds, ProbeOutcome, ToolHooks
from torchdoctor.agent.reasoning.llm import OpenAIConfig
from torchdoctor.agent.reasoning.llm.reasoner import LLMReasoner
from torchdoctor.agent.reasoning.llm.tool_loop import ask
from torchdoctor.agent.reasoning.offline import OfflineReasoner
from torchdoctor.agent.report import render
from torchdoctor.agent.report.markdown import render_markdown

SCRIPT = "train_small.py"
ITEM_LINE = "losses.append(loss.item())"  # line 19: the static rule host-sync-in-step hits it
CRITERION_LINE = "criterion = nn.CrossEntropyLoss()"  # line 8: no tool reports anything
LOSS_LINE = "loss = criterion(model(x), y)"  # line 16: only the probe run below observes it


@pytest.fixture(scope="module")
def stub() -> Iterator[StubLLM]:
    with StubLLM(context_length=32_768) as server:
        yield server


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return copy_fixture(tmp_path, SCRIPT)


def make(stub: StubLLM, workspace: Path) -> LLMReasoner:
    config = OpenAIConfig.model_validate(
        {
            "model": stub.model,
            "base_url": stub.base_url,
            "cache": False,
            "timeout_s": 2.0,
            "max_retries": 0,
            "max_output_tokens": 512,
        }
    )
    return LLMReasoner(config, workspace, OfflineReasoner(), sleep=lambda _s: None)


def problem(line: int, snippet: str, rule: str) -> dict[str, Any]:
    return claimed(line, snippet, rule, SCRIPT)


def claimed(line: int, snippet: str, rule: str, file: str = "train.py") -> dict[str, Any]:
    """The arguments of a `report_problem` call."""
    return {
        "checkpoint": 6,
        "rule": rule,
        "severity": "high",
        "title": rule.replace("-", " "),
        "file": file,
        "line": line,
        "snippet": snippet,
        "explanation": "the model says so",
    }


def test_a_review_answer_keeps_backed_claims_as_findings_and_the_rest_as_hypotheses(
    stub: StubLLM, workspace: Path
) -> None:
    request = point_requests(workspace)[6]
    hit = next(f for f in OfflineReasoner().reason(request).findings if f.line == 19)
    stub.push(
        answer(
            claim(rule="item-every-step", line=19, snippet=ITEM_LINE),
            claim(rule="unweighted-loss", line=8, snippet=CRITERION_LINE),
        )
    )
    result = make(stub, workspace).reason(request)
    added = [f for f in result.findings if f.rule.startswith("llm-")]
    assert [(f.rule, f.line) for f in added] == [("llm-item-every-step", 19)]
    assert added[0].evidence[0].data["backed_by"] == [f"{hit.rule} at {SCRIPT}:19"]
    assert [(h.rule, h.line) for h in result.hypotheses] == [("llm-unweighted-loss", 8)]
    assert result.usage["llm_hypotheses"] == 1
    assert any("1 LLM claim(s) no tool backed" in note for note in result.notes)


def test_problems_the_tool_loop_reports_are_findings_only_with_tool_evidence(
    stub: StubLLM, workspace: Path
) -> None:
    results = [OfflineReasoner().reason(r) for r in point_requests(workspace).values()]
    brief = AuditBrief(
        target=str(workspace), findings=[f for r in results for f in r.findings], files=[SCRIPT]
    )
    stub.push(
        Reply.tool("run_probes", {"script": SCRIPT, "args": []}, "call_1"),
        Reply.tool("report_problem", problem(19, ITEM_LINE, "item-every-step"), "call_2"),
        Reply.tool("report_problem", problem(16, LOSS_LINE, "loss-goes-nan"), "call_3"),
        Reply.tool("report_problem", problem(8, CRITERION_LINE, "loss-unweighted"), "call_4"),
        Reply(content="Also, line 14 leaks GPU memory every step and line 9 is unsafe."),
    )

    def probes(script: str, args: list[str]) -> ProbeOutcome:
        seen = Evidence(
            source="probe:nonfinite", kind="probe", message="loss is nan", file=SCRIPT, line=16
        )
        return ProbeOutcome(text="ok: 4 steps; loss is nan at step 3", evidence=[seen])

    loop = ask(
        "What else is wrong?",
        brief,
        reasoner=make(stub, workspace),
        hooks=ToolHooks(run_probes=probes),
        bounds=LoopBounds(max_tool_calls=6),
    )
    assert loop.stopped == "answered" and "line 14 leaks" in loop.text
    backed = {f.line: f.evidence[0].data["backed_by"] for f in loop.findings}
    assert list(backed) == [19, 16]
    assert backed[19] == [f"host-sync-in-step at {SCRIPT}:19"]
    assert backed[16] == [f"probe:nonfinite at {SCRIPT}:16: loss is nan"]
    assert [(h.rule, h.line) for h in loop.hypotheses] == [("llm-loss-unweighted", 8)]
    results_of = [call.result for call in loop.tool_calls[1:]]
    assert "recorded as finding" in results_of[0] and "recorded as finding" in results_of[1]
    assert "recorded as an unverified hypothesis, not a finding" in results_of[2]


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
FORWARD_LINE = "loss = ((model.forward(data) - target) ** 2).mean()"  # line 11: direct-forward-call
TARGET_LINE = "target = data.sum(dim=1, keepdim=True)"  # line 8: no tool reports anything


@pytest.mark.slow
def test_an_audit_reports_backed_claims_as_findings_and_unbacked_ones_as_hypotheses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "train.py").write_text(TRAIN)

    def conversation(body: dict[str, Any]) -> Reply:
        """Review requests: nothing to add. The phase's tool loop (for direct-forward-call,
        which no codemod fixes): two claims, then a free-text one."""
        if "tools" not in body:
            return Reply.json(EMPTY_ANSWER)
        done = sum(1 for m in body["messages"] if m["role"] == "tool")
        script = [
            Reply.tool("report_problem", claimed(11, FORWARD_LINE, "bypasses-hooks"), "call_1"),
            Reply.tool("report_problem", claimed(8, TARGET_LINE, "target-leaks"), "call_2"),
        ]
        return script[done] if done < len(script) else Reply(content="line 12 leaks memory")

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("TORCHDOCTOR_MODEL", "stub-model")
    monkeypatch.setenv("TORCHDOCTOR_HOME", str(tmp_path / "home"))
    with StubLLM(fallback=conversation) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        outcome = run_audit(AuditOptions(target=root, fix=True, write_ledger=False))
    report = outcome.report
    llm = [(f.rule, f.line) for f in report.findings if f.rule.startswith("llm-")]
    assert llm == [("llm-bypasses-hooks", 11)]
    assert [(h.rule, h.line) for h in report.hypotheses] == [("llm-target-leaks", 8)]
    assert not [f for f in report.findings if f.line == 12 and f.rule.startswith("llm-")]
    text = render_markdown(report)
    assert "## Unverified hypotheses" in text and "llm-target-leaks" in text
    run = json.loads(render(report, "sarif"))["runs"][0]
    assert [h["ruleId"] for h in run["properties"]["unverifiedHypotheses"]] == ["llm-target-leaks"]
    assert "llm-target-leaks" not in {r["ruleId"] for r in run["results"]}
