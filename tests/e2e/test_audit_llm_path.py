"""A whole audit through the LLM reasoner, end to end.

The "model" here is `tests/llm_stub_server.StubLLM`: a scripted OpenAI-compatible HTTP server on
127.0.0.1 standing in for a hosted model (no hosted LLM can be reached from the tests). It
answers every point with an empty but valid structured answer unless a test scripts otherwise.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import EXAMPLES
from tests.llm_stub_server import StubLLM
from torchdoctor.agent.audit import AuditOptions, run_audit


@pytest.fixture
def example(tmp_path: Path) -> Path:
    target = tmp_path / "train_buggy.py"
    target.write_bytes((EXAMPLES / "train_buggy.py").read_bytes())
    return target


def test_llm_audit_keeps_offline_findings_and_records_provenance(
    example: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    offline = run_audit(AuditOptions(target=example, write_ledger=False))
    with StubLLM(model="stub-model") as stub:
        monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("TORCHDOCTOR_MODEL", "stub-model")
        first = run_audit(AuditOptions(target=example, write_ledger=False))
        calls_first = stub.chat_calls
        stub.reset_counts()
        again = run_audit(AuditOptions(target=example, write_ledger=False))
        assert stub.chat_calls == 0, "an unchanged re-run is served from the cache"
        forced = run_audit(AuditOptions(target=example, write_ledger=False, offline=True))
        assert stub.chat_calls == 0, "--offline never calls the endpoint"
    assert calls_first > 0
    assert first.report.provenance.reasoner == "llm:stub-model"
    assert "llm" in first.report.provenance.extra
    assert forced.report.provenance.reasoner == "offline"
    ids = {f.id: f.status for f in offline.report.findings}
    assert {f.id: f.status for f in first.report.findings} == ids
    assert {f.id: f.status for f in again.report.findings} == ids
