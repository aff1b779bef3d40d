"""LLMReasoner against a scripted OpenAI-compatible server on 127.0.0.1.

The server (tests/llm_stub_server.py) is a scripted stand-in for a hosted model: each test
scripts its replies, so these tests pin how torchdoctor treats answers (good, malformed,
hallucinated, slow, rate-limited, failing), never what a real model would say.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.llm_stub_server import Reply, StubLLM
from tests.llm_workspace import copy_fixture, point_requests
from torchdoctor.agent.models import Status
from torchdoctor.agent.reasoning.base import PointRequest, PointResult
from torchdoctor.agent.reasoning.llm import ModelPrice, OfflineConfig, OpenAIConfig, build_reasoner
from torchdoctor.agent.reasoning.llm.reasoner import LLMReasoner
from torchdoctor.agent.reasoning.offline import OfflineReasoner

PRINT_SNIPPET = 'print(f"step {step}: loss {loss.item():.4f}")'


def claim(**overrides: Any) -> dict[str, Any]:
    base = {
        "checkpoint": 6,
        "item": "6.1",
        "rule": "print-forces-sync",
        "severity": "medium",
        "title": "printing a CUDA scalar every step synchronises the device",
        "file": "train_small.py",
        "line": 20,
        "snippet": PRINT_SNIPPET,
        "explanation": "loss.item() blocks the host until the kernel queue drains.",
        "fix_diff": "",
    }
    return {**base, **overrides}


def answer(
    *claims: dict[str, Any], explanations: list[dict[str, str]] | None = None, point: int = 6
) -> Reply:
    """The model's answer for one point: its section of the keyed-by-point answer."""
    section = {
        "point": point,
        "findings": list(claims),
        "explanations": explanations or [],
        "not_checked": [],
    }
    return Reply.json({"points": [section]})


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


def make(
    stub: StubLLM, workspace: Path, sleeps: list[float] | None = None, **overrides: Any
) -> LLMReasoner:
    settings: dict[str, Any] = {
        "model": stub.model,
        "base_url": stub.base_url,
        "api_key": "test-key",
        "cache_dir": workspace.parent / "cache",
        "timeout_s": 0.5,
        "backoff_base_s": 0.01,
        "max_retries": 2,
        "max_output_tokens": 512,
    }
    config = OpenAIConfig(**{**settings, **overrides})
    sleep = sleeps.append if sleeps is not None else (lambda _s: None)
    return LLMReasoner(config, workspace, OfflineReasoner(), sleep=sleep)


def offline_view(result: PointResult) -> list[dict[str, Any]]:
    """The offline findings as the LLM must leave them (its own evidence stripped)."""
    return [
        f.model_copy(update={"evidence": [e for e in f.evidence if e.kind != "llm"]}).model_dump()
        for f in result.findings
        if not f.rule.startswith("llm-")
    ]


def test_factory_picks_the_backend_from_the_config(stub: StubLLM, workspace: Path) -> None:
    offline = OfflineReasoner()
    assert build_reasoner(OpenAIConfig(base_url=stub.base_url), workspace, offline).name == (
        "llm:gpt-4o-mini"
    )
    assert build_reasoner(OfflineConfig(), workspace, offline) is offline


def test_a_good_structured_answer_adds_a_validated_open_finding(
    stub: StubLLM, workspace: Path, requests_: dict[int, PointRequest]
) -> None:
    offline = OfflineReasoner().reason(requests_[6])
    stub.push(
        answer(
            claim(status="verified"),
            explanations=[
                {
                    "finding_id": offline.findings[0].id,
                    "explanation": "each .item() waits for the GPU",
                }
            ],
        )
    )
    result = make(stub, workspace).reason(requests_[6])
    added = [f for f in result.findings if f.rule.startswith("llm-")]
    assert [(f.rule, f.line, f.status) for f in added] == [
        ("llm-print-forces-sync", 20, Status.OPEN)
    ]
    assert added[0].evidence[0].kind == "llm" and added[0].fix is None
    assert offline_view(result) == [f.model_dump() for f in offline.findings]
    explained = result.findings[0].evidence[-1]
    assert explained.kind == "llm" and "waits for the GPU" in explained.message
    request = stub.requests[-1]
    assert request["response_format"]["type"] == "json_schema"
    assert request["seed"] == 0 and request["temperature"] == 0.0
    assert result.usage["llm_findings_added"] == 1 and result.usage["prompt_tokens"] > 0
    assert {c.item: c.verdict for c in result.coverage}["6.1"] == "fail"


def test_malformed_json_is_repaired_once(
    stub: StubLLM, workspace: Path, requests_: dict[int, PointRequest]
) -> None:
    stub.push(Reply(content='{"findings": [ {"checkpoint": 6,'), answer(claim()))
    result = make(stub, workspace).reason(requests_[6])
    assert result.usage["repairs"] == 1
    assert any(f.rule == "llm-print-forces-sync" for f in result.findings)
    repair_turn = stub.requests[-1]["messages"]
    assert repair_turn[-2]["role"] == "assistant" and "not JSON" in repair_turn[-1]["content"]


def test_unrepairable_answer_keeps_the_offline_result(
    stub: StubLLM, workspace: Path, requests_: dict[int, PointRequest]
) -> None:
    stub.push(Reply(content="I think the code is fine."), Reply.json({"findings": "none"}))
    result = make(stub, workspace).reason(requests_[6])
    offline = OfflineReasoner().reason(requests_[6])
    assert result.findings == offline.findings
    assert any("point 6: not reasoned over by the LLM: answer unusable" in n for n in result.notes)


def test_hallucinated_lines_and_snippets_are_dropped_and_counted(
    stub: StubLLM, workspace: Path, requests_: dict[int, PointRequest]
) -> None:
    stub.push(
        answer(
            claim(line=5),  # the print is at line 20, not within ±2 of 5
            claim(snippet="torch.cuda.synchronize()"),  # not in the file at all
            claim(file="other.py"),  # not an audited file
            claim(line=19, snippet="losses.append(loss.item())", rule="append-sync"),  # real: kept
        )
    )
    result = make(stub, workspace).reason(requests_[6])
    added = [f for f in result.findings if f.rule.startswith("llm-")]
    assert [(f.rule, f.line) for f in added] == [("llm-append-sync", 19)]
    assert result.usage["llm_claims_dropped"] == 3
    note = next(n for n in result.notes if "did not validate" in n)
    assert "snippet-not-found: 2" in note and "unknown-file: 1" in note


def test_unknown_checkpoint_is_dropped_and_another_point_is_rerouted(
    stub: StubLLM, workspace: Path, requests_: dict[int, PointRequest]
) -> None:
    stub.push(
        answer(
            claim(checkpoint=13),
            claim(
                checkpoint=11,
                item="11.2",
                rule="checkpoint-of-unknown-origin",
                severity="high",
                line=9,
                snippet='state = torch.load("checkpoint.pt")',
            ),
        )
    )
    result = make(stub, workspace).reason(requests_[6])
    # point 6's request carries no point-11 tool finding to back it: an unverified hypothesis
    rerouted = [h for h in result.hypotheses if h.rule == "llm-checkpoint-of-unknown-origin"]
    assert [h.checkpoint for h in rerouted] == [11]
    assert result.usage["llm_claims_dropped"] == 1 and result.usage["llm_rerouted"] == 1
    assert any("re-routed to point 11" in n for n in result.notes)


def test_a_slow_answer_past_the_timeout_degrades_the_point(
    stub: StubLLM, workspace: Path, requests_: dict[int, PointRequest]
) -> None:
    stub.push(
        Reply.json({"findings": []}),
    )
    stub.script[0].delay_s = 1.0
    result = make(stub, workspace, timeout_s=0.2, max_retries=0).reason(requests_[6])
    assert result.findings == OfflineReasoner().reason(requests_[6]).findings
    assert (
        "point 6: not reasoned over by the LLM: endpoint unavailable (timed out"
        in (result.notes[-1])
    )


def test_rate_limit_is_retried_after_the_servers_delay(
    stub: StubLLM, workspace: Path, requests_: dict[int, PointRequest]
) -> None:
    stub.push(Reply.error(429, **{"Retry-After": "0.05"}), answer(claim()))
    sleeps: list[float] = []
    result = make(stub, workspace, sleeps, backoff_base_s=0.3).reason(requests_[6])
    assert sleeps == [0.05]
    assert result.usage["retries"] == 1
    assert any(f.rule == "llm-print-forces-sync" for f in result.findings)


def test_repeated_server_errors_leave_offline_findings_and_a_note(
    stub: StubLLM, workspace: Path, requests_: dict[int, PointRequest]
) -> None:
    stub.push(*[Reply.error(500)] * 3)
    sleeps: list[float] = []
    reasoner = make(stub, workspace, sleeps)
    result = reasoner.reason(requests_[4])
    assert result.findings == OfflineReasoner().reason(requests_[4]).findings
    assert result.notes[-1] == (
        "point 4: not reasoned over by the LLM: endpoint unavailable (HTTP 500 (after 3 attempts))"
    )
    assert sleeps == [0.01, 0.02]
    assert reasoner.provenance()["degraded_points"] == {"4": "endpoint unavailable"}


def test_server_without_structured_outputs_gets_json_mode(
    workspace: Path, requests_: dict[int, PointRequest]
) -> None:
    with StubLLM(structured_outputs=False) as stub:
        stub.push(answer(claim()))
        reasoner = make(stub, workspace)
        result = reasoner.reason(requests_[6])
        assert stub.probe_calls == 1
        assert stub.requests[-1]["response_format"] == {"type": "json_object"}
        assert any(f.rule == "llm-print-forces-sync" for f in result.findings)
        assert reasoner.provenance()["structured_outputs"] is False


def test_server_without_any_json_mode_gets_plain_requests(
    workspace: Path, requests_: dict[int, PointRequest]
) -> None:
    with StubLLM(structured_outputs=False, json_object=False) as stub:
        stub.push(Reply(content="```json\n" + (answer(claim()).content or "") + "\n```"))
        result = make(stub, workspace).reason(requests_[6])
        assert "response_format" not in stub.requests[-1]
        assert any(f.rule == "llm-print-forces-sync" for f in result.findings)


def test_a_re_audit_of_unchanged_code_is_served_from_the_cache(
    stub: StubLLM, workspace: Path, requests_: dict[int, PointRequest]
) -> None:
    stub.push(answer(claim()))
    first = [make(stub, workspace).reason(requests_[p]) for p in range(1, 13)]
    assert stub.chat_calls == 12
    stub.reset_counts()
    again = make(stub, workspace)
    second = [again.reason(requests_[p]) for p in range(1, 13)]
    assert stub.http_calls == 0
    assert [r.findings for r in second] == [r.findings for r in first]
    assert again.provenance()["prompt_tokens"] == 0
    assert again.provenance()["cache_hits"] == 12


def test_an_exhausted_budget_degrades_later_points(
    stub: StubLLM, workspace: Path, requests_: dict[int, PointRequest]
) -> None:
    probe = make(stub, workspace, cache=False)
    probe.reason(requests_[6])
    one_point = probe.usage.prompt_tokens + probe.usage.completion_tokens
    reasoner = make(stub, workspace, cache=False, token_budget=one_point + 520)
    results = [reasoner.reason(requests_[p]) for p in (6, 4)]
    assert "not reasoned over" not in " ".join(results[0].notes)
    assert (
        results[1].notes[-1].startswith("point 4: not reasoned over by the LLM: budget exhausted")
    )
    assert results[1].findings == OfflineReasoner().reason(requests_[4]).findings


def test_cost_is_tracked_with_a_price_and_unknown_without(
    stub: StubLLM, workspace: Path, requests_: dict[int, PointRequest]
) -> None:
    priced = make(
        stub,
        workspace,
        cache=False,
        prices={stub.model: ModelPrice(input_per_mtok=1.0, output_per_mtok=2.0)},
    )
    priced.reason(requests_[6])
    assert float(priced.provenance()["cost_usd"]) > 0
    unpriced = make(stub, workspace, cache=False)
    unpriced.reason(requests_[6])
    assert unpriced.provenance()["cost_usd"] == "unknown"


def test_parallel_points_respect_the_concurrency_limit(
    workspace: Path, requests_: dict[int, PointRequest]
) -> None:
    with StubLLM(fallback=lambda _b: Reply(content='{"findings": []}', delay_s=0.05)) as stub:
        reasoner = make(stub, workspace, cache=False, max_concurrency=2)
        with ThreadPoolExecutor(max_workers=6) as pool:
            results = list(pool.map(reasoner.reason, requests_.values()))
        assert len(results) == 12 and stub.max_in_flight == 2


def test_a_prompt_that_cannot_fit_the_context_degrades(
    workspace: Path, requests_: dict[int, PointRequest]
) -> None:
    with StubLLM(context_length=1_024) as stub:
        result = make(stub, workspace, max_output_tokens=1_000).reason(requests_[6])
        assert stub.chat_calls == 0
        assert "model's context is 1024" in result.notes[-1]


def test_an_llm_patch_is_kept_unverified_only_when_it_applies(
    stub: StubLLM, workspace: Path, requests_: dict[int, PointRequest]
) -> None:
    good = (
        "--- a/train_small.py\n+++ b/train_small.py\n@@ -20,1 +20,1 @@\n"
        f"-    {PRINT_SNIPPET}\n+    pass\n"
    )
    bad = good.replace("loss.item()", "loss.value()")
    stub.push(
        answer(
            claim(fix_diff=good),
            claim(line=19, rule="other", snippet="losses.append(loss.item())", fix_diff=bad),
        )
    )
    result = make(stub, workspace).reason(requests_[6])
    fixes = {f.rule: f.fix for f in result.findings if f.rule.startswith("llm-")}
    fixed = fixes["llm-print-forces-sync"]
    assert fixed is not None and fixed.origin == "llm" and fixed.verified is False
    assert fixes["llm-other"] is None
    assert any("1 LLM patch(es) rejected" in n for n in result.notes)


def test_propose_fix_returns_an_unverified_llm_patch_or_nothing(
    stub: StubLLM, workspace: Path, requests_: dict[int, PointRequest]
) -> None:
    target = OfflineReasoner().reason(requests_[6]).findings[0]
    good = (
        "--- a/train_small.py\n+++ b/train_small.py\n@@ -19,1 +19,1 @@\n"
        "-    losses.append(loss.item())\n+    losses.append(loss.detach())\n"
    )
    stub.push(
        Reply.json({"diff": good, "explanation": "keep the tensor on the device"}),
        Reply.json(
            {
                "diff": good.replace("losses.append", "history.add"),
                "explanation": "wrong file content",
            }
        ),
    )
    reasoner = make(stub, workspace, cache=False)
    fix = reasoner.propose_fix(target)
    assert fix is not None and (fix.origin, fix.verified, fix.diff) == ("llm", False, good)
    assert reasoner.propose_fix(target) is None
    assert "en/fix" in reasoner.provenance()["templates"]
    assert "Boundary token for this message" in stub.requests[-1]["messages"][1]["content"]


def test_parameters_a_reasoning_model_refuses_are_adapted_once(
    workspace: Path, requests_: dict[int, PointRequest]
) -> None:
    with StubLLM(refuses=("max_tokens", "temperature")) as stub:
        stub.push(answer(claim()))
        reasoner = make(stub, workspace)
        result = reasoner.reason(requests_[6])
        assert any(f.rule == "llm-print-forces-sync" for f in result.findings)
        assert reasoner.provenance()["structured_outputs"] is True
        last = stub.requests[-1]
        assert "max_completion_tokens" in last and "temperature" not in last
        assert "max_tokens" not in last


def test_changed_code_misses_the_cache(
    stub: StubLLM, workspace: Path, requests_: dict[int, PointRequest]
) -> None:
    make(stub, workspace).reason(requests_[6])
    source = workspace / "train_small.py"
    source.write_text(source.read_text().replace("loss {loss.item():.4f}", "loss {loss}"))
    stub.reset_counts()
    make(stub, workspace).reason(point_requests(workspace)[6])
    assert stub.chat_calls == 1


def test_a_french_audit_sends_the_french_prompts(stub: StubLLM, workspace: Path) -> None:
    reasoner = make(stub, workspace)
    reasoner.reason(point_requests(workspace, lang="fr")[6])
    system, user = (m["content"] for m in stub.requests[-1]["messages"])
    assert "Rédigez titres et explications en français." in system
    assert user.startswith("Examinez le point 6 de la checklist.")
    assert "\n6. Performance CPU/GPU et passage à l'échelle (phase 4). Aussi : " in user
    assert set(reasoner.provenance()["templates"]) == {"fr/review", "fr/system"}


def test_an_unusable_cache_dir_disables_the_cache_not_the_audit(
    stub: StubLLM, workspace: Path, requests_: dict[int, PointRequest]
) -> None:
    blocker = workspace.parent / "not-a-dir"
    blocker.write_text("a file where the cache dir should be")
    reasoner = make(stub, workspace, cache_dir=blocker)
    reasoner.reason(requests_[6])
    assert stub.chat_calls == 1
    assert str(reasoner.provenance()["cache"]).startswith("answer cache disabled:")


def test_a_dead_endpoint_is_not_called_again_after_two_failed_points(
    workspace: Path, requests_: dict[int, PointRequest]
) -> None:
    with StubLLM(fallback=lambda _b: Reply.error(503)) as stub:
        reasoner = make(stub, workspace, max_retries=1)
        results = [reasoner.reason(requests_[p]) for p in (1, 2, 3)]
        assert stub.chat_calls == 4
        assert results[2].notes[-1] == (
            "point 3: not reasoned over by the LLM: endpoint unavailable "
            "(not called again after 2 consecutive failures)"
        )


def test_locations_beyond_the_window_cap_are_named_in_the_notes(
    stub: StubLLM, workspace: Path, requests_: dict[int, PointRequest]
) -> None:
    result = make(stub, workspace, max_window_lines=10, window_context=3).reason(requests_[6])
    assert any(
        n.startswith("point 6: ") and "not shown to the LLM (at most 10 code lines" in n
        for n in result.notes
    )


def test_provenance_never_shows_credentials_in_the_endpoint(workspace: Path) -> None:
    config = OpenAIConfig(base_url="https://user:hunter2@llm.example:8443/v1?key=abc", cache=False)
    provenance = LLMReasoner(config, workspace, OfflineReasoner()).provenance()
    assert provenance["base_url"] == "https://llm.example:8443/v1"
