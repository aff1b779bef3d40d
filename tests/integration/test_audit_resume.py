"""Durable audits: kill -9 while fixes are being verified, resume by id, and get what an
uninterrupted audit gets, without verifying again what was verified. Real subprocesses, a real
sandbox (local), real SQLite checkpoints under TORCHDOCTOR_HOME."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.test_cli import REPO, torchdoctor
from torchdoctor.agent.audit import run_config
from torchdoctor.agent.durable import open_store
from torchdoctor.agent.graph import build_graph
from torchdoctor.agent.ledger import BEGIN, END

# Two fixable findings in two phases: zero-grad-missing (phase 1), no-torch-seed (phase 3).
TRAIN = """import torch
from torch import nn

model = nn.Linear(8, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
data = torch.randn(64, 8)
target = data.sum(dim=1, keepdim=True)
for step in range(40):
    loss = ((model(data) - target) ** 2).mean()
    loss.backward()
    optimizer.step()
"""
# The quick probes: this is about resuming fix verification, not determinism or export.
AUDIT = ["--run", "python train.py", "--steps", "4", "--probes", "cheap", "--fix"]
AUDIT += ["--format", "json"]
AUDIT_ID = re.compile(r"audit ([0-9a-f]{12}) \(resume")


def _project(root: Path) -> Path:
    root.mkdir()
    (root / "train.py").write_text(TRAIN)
    return root


def _fixes(report: dict[str, object]) -> dict[str, tuple[str, bool, str]]:
    findings = report["findings"]
    assert isinstance(findings, list)
    return {
        f["id"]: (f["rule"], f["fix"]["verified"], f["fix"]["diff"])
        for f in findings
        if f["fix"] is not None
    }


def _trace(audit_id: str) -> list[str]:
    with open_store() as store:
        values = build_graph(store.saver).get_state(run_config(audit_id)).values
    return list(values["trace"])


@pytest.mark.slow
def test_kill_9_during_fix_verification_then_resume_gives_the_uninterrupted_result(
    tmp_path: Path,
) -> None:
    # The uninterrupted audit runs beside the killed one, in a home and tree of its own: an
    # audit is one chain of sandbox runs, so two side by side keep both cores busy.
    whole_out, whole_err = tmp_path / "whole.json", tmp_path / "whole.err"
    whole_tree = _project(tmp_path / "whole")
    with whole_out.open("w") as stdout, whole_err.open("w") as stderr:
        whole = subprocess.Popen(
            [sys.executable, "-m", "torchdoctor", "audit", str(whole_tree), *AUDIT],
            stdout=stdout,
            stderr=stderr,
            text=True,
            cwd=REPO,
            env={**os.environ, "TORCHDOCTOR_HOME": str(tmp_path / "whole-home")},
            start_new_session=True,
        )
    try:
        _kill_then_resume(tmp_path, whole, whole_out, whole_err)
    finally:
        if whole.poll() is None:
            os.killpg(whole.pid, signal.SIGKILL)
        whole.wait()


def _kill_then_resume(
    tmp_path: Path, whole: subprocess.Popen[str], whole_out: Path, whole_err: Path
) -> None:
    project = _project(tmp_path / "killed")
    process = subprocess.Popen(
        [sys.executable, "-m", "torchdoctor", "audit", str(project), *AUDIT],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=os.environ.copy(),
        start_new_session=True,
    )
    assert process.stderr is not None
    audit_id, verifying = None, 0
    deadline = time.monotonic() + 600
    for line in process.stderr:
        audit_id = audit_id or next(iter(AUDIT_ID.findall(line)), None)
        verifying += "verifying" in line
        if verifying == 2:  # the first fix is verified and checkpointed, the second is running
            os.killpg(process.pid, signal.SIGKILL)
            break
        assert time.monotonic() < deadline
    process.wait()
    assert process.returncode == -signal.SIGKILL and audit_id is not None
    ledger = project / "ISSUES.md"
    text = ledger.read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1, "the ledger is whole, never half"
    done_before = [step for step in _trace(audit_id) if step.startswith("verify:")]
    assert len(done_before) == 1

    resumed = torchdoctor("audit", "--resume", audit_id, "--format", "json")
    assert resumed.returncode == 0, resumed.stderr
    assert whole.wait(timeout=600) == 0, whole_err.read_text()
    assert (tmp_path / "whole" / "train.py").read_text() == TRAIN, "--fix alone never writes"
    expected = json.loads(whole_out.read_text())
    assert {rule for rule, _, _ in _fixes(expected).values()} >= {
        "zero-grad-missing",
        "no-torch-seed",
    }
    report = json.loads(resumed.stdout)
    assert _fixes(report) == _fixes(expected)
    assert [f["id"] for f in report["findings"]] == [f["id"] for f in expected["findings"]]
    verified = [step for step in _trace(audit_id) if step.startswith("verify:")]
    assert verified[0] == done_before[0] and len(verified) == len(set(verified)), verified
    assert report["provenance"]["audit_id"] == audit_id


def test_an_unknown_audit_id_is_a_one_line_error() -> None:
    result = torchdoctor("audit", "--resume", "0123456789ab")
    assert result.returncode == 2
    assert "no audit '0123456789ab' to resume" in result.stderr
    assert "Traceback" not in result.stderr


def test_gc_prunes_audits_older_than_the_retention(tmp_path: Path) -> None:
    from torchdoctor.agent.audit import AuditOptions, run_audit

    project = _project(tmp_path / "p")
    kept = run_audit(AuditOptions(target=project, write_ledger=False, fix=True)).audit_id
    assert torchdoctor("gc").stdout.startswith("pruned 0 audit(s)")
    pruned = torchdoctor("gc", "--older-than-days", "0")
    assert pruned.returncode == 0 and pruned.stdout.startswith("pruned 1 audit(s)")
    resumed = torchdoctor("audit", "--resume", kept)
    assert resumed.returncode == 2 and "pruned" in resumed.stderr


def test_a_new_audit_prunes_the_audits_past_the_retention(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torchdoctor.agent.audit import AuditOptions, run_audit

    project = _project(tmp_path / "p")
    options = AuditOptions(target=project, write_ledger=False, fix=True)
    old = run_audit(options).audit_id
    kept = run_audit(options).audit_id
    with open_store() as store:
        assert store.entry(old) is not None, "within the default retention, both are kept"
    monkeypatch.setenv("TORCHDOCTOR_RETENTION_DAYS", "0")
    new = run_audit(options).audit_id
    with open_store() as store:
        assert [store.entry(i) is None for i in (old, kept, new)] == [True, True, False]
        assert "options" not in build_graph(store.saver).get_state(run_config(old)).values
