"""Checkpoints rebuild the state's own types without LangGraph's "unregistered type" warning
(or its "blocked" one): every type a checkpoint holds is on the serializer's allow-list, for
the in-memory checkpointer of a static audit and the durable one an audit is resumed from; and
an audit broken off mid-way resumes from them to exactly the report of an unbroken one."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from torchdoctor.agent import graph as graph_module
from torchdoctor.agent.audit import AuditOptions, resume_audit, run_audit
from torchdoctor.agent.graph import Phase
from torchdoctor.agent.models import AuditReport
from torchdoctor.agent.state import AuditState

TRAIN = """import torch
from torch import nn

model = nn.Linear(8, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
data = torch.randn(64, 8)
for step in range(10):
    loss = model.forward(data).mean()
    loss.backward()
    optimizer.step()
"""


def test_audits_and_resumes_rebuild_their_state_without_serializer_warnings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TORCHDOCTOR_HOME", str(tmp_path / "home"))
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    caplog.set_level(logging.WARNING, logger="langgraph")
    static = run_audit(AuditOptions(target=script, write_ledger=False))
    fixing = run_audit(AuditOptions(target=script, write_ledger=False, fix=True))
    resumed = resume_audit(fixing.audit_id)
    assert static.report.findings and resumed.report.findings == fixing.report.findings
    assert any(f.fix is not None for f in fixing.report.findings), "a fix record was stored"
    serde = [r.getMessage() for r in caplog.records if "checkpoint.serde" in r.name]
    assert serde == []


class Crash(RuntimeError):
    pass


def _stable(report: AuditReport) -> dict[str, object]:
    """The report without what names the run itself (its id, start and duration)."""
    dumped = report.model_dump(mode="json")
    provenance = dumped["provenance"]
    for volatile in ("audit_id", "started_at", "duration_s"):
        provenance.pop(volatile)
    return dumped


def test_an_audit_broken_off_mid_way_resumes_to_the_identical_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHDOCTOR_HOME", str(tmp_path / "home"))
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    options = AuditOptions(target=script, write_ledger=False, fix=True)
    whole = run_audit(options)
    gate = Phase.gate

    def breaks_at_phase_3(self: Phase, state: AuditState, runtime: Any) -> dict[str, Any]:
        if self.number == 3:
            raise Crash("the process dies here")
        return gate(self, state, runtime)

    with monkeypatch.context() as patched:
        patched.setattr(Phase, "gate", breaks_at_phase_3)
        # the process's compiled graph holds the real gate: this audit compiles its own
        fresh = graph_module.audit_graph().compile(name="torchdoctor-audit")
        patched.setattr(graph_module, "compiled_graph", lambda: fresh)
        with pytest.raises(Crash):
            run_audit(options, audit_id="cut0000000001")
    resumed = resume_audit("cut0000000001")
    assert "gate:3" in resumed.trace and resumed.trace.count("ingest") == 1
    assert _stable(resumed.report) == _stable(whole.report)
