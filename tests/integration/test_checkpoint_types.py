"""Checkpoints rebuild the state's own types without LangGraph's "unregistered type" warning
(or its "blocked" one): every type a checkpoint holds is on the serializer's allow-list, for
the in-memory checkpointer of a static audit and the durable one an audit is resumed from."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from torchdoctor.agent.audit import AuditOptions, resume_audit, run_audit

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
