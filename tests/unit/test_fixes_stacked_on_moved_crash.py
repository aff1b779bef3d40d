"""A crash fix the original run never reaches is verified on top of the fix that got the run
past the first crash (the VAE tutorial's two `.data[0]` reads of one loop)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import cast

from tests.fix_findings import findings_of
from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.fixing import FixBench, propose
from torchdoctor.agent.graph import phases
from torchdoctor.agent.harness import Harness
from torchdoctor.agent.models import Finding, Fix, Verification
from torchdoctor.agent.state import AuditState

SCRIPT = """import torch
import torch.nn as nn

criterion = nn.MSELoss()
model = nn.Linear(2, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
total = 0.0
for step in range(3):
    loss = criterion(model(torch.randn(4, 2)), torch.randn(4, 1))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    total += loss.data[0]
    print(step, loss.data[0])
"""
MOVED = Verification(step="crash-moved-on", ok=True, detail="the original's error is gone")


def _stage_and_records(root: Path) -> tuple[AuditState, object, FixBench, list[str]]:
    findings = [f for f in findings_of(root) if f.rule == "scalar-loss-indexed"]
    assert len(findings) == 2
    phase = findings[0].phase
    records = {r.finding_id: r for r in propose(root, findings, phase)}
    first, second = sorted(records, key=lambda i: next(f.line for f in findings if f.id == i))
    state = cast(AuditState, {"findings": findings, "fixes": records})
    stage = next(p for p in phases() if p.number == phase)
    bench = FixBench(
        root, cast(Harness, object()), ["python", "train.py"], 20, EngineConfig(), ["train.py"]
    )
    return state, stage, bench, [first, second]


def _with_fix(state: AuditState, finding_id: str) -> list[Finding]:
    """The findings, the one of `finding_id` holding its verified fix (as the graph keeps it)."""
    records = state["fixes"]
    return [
        f.model_copy(update={"fix": Fix(diff=records[f.id].diff, verified=True)})
        if f.id == finding_id
        else f
        for f in state["findings"]
    ]


def test_a_correctness_fix_is_verified_on_the_fix_that_got_past_the_first_crash(
    tmp_path: Path,
) -> None:
    (tmp_path / "train.py").write_text(SCRIPT, encoding="utf-8")
    state, stage, bench, (first, _second) = _stage_and_records(tmp_path)
    records = state["fixes"]
    moved_past = records[first].model_copy(update={"state": "verified", "verification": [MOVED]})
    findings = _with_fix(state, first)
    with_moved = cast(AuditState, {"findings": findings, "fixes": {**records, first: moved_past}})

    made = stage.stacked(with_moved, bench, past_crashes_only=True)  # type: ignore[attr-defined]

    assert made is not None
    texts, rules = made
    assert rules == ["scalar-loss-indexed"]
    assert "total += loss.item()" in texts["train.py"]
    assert "print(step, loss.data[0])" in texts["train.py"]  # left for the second fix


def test_fixes_verified_on_a_completed_run_are_not_stacked_under_correctness_fixes(
    tmp_path: Path,
) -> None:
    (tmp_path / "train.py").write_text(SCRIPT, encoding="utf-8")
    state, stage, bench, (first, _second) = _stage_and_records(tmp_path)
    records = state["fixes"]
    completed = Verification(step="smoke-run", ok=True, detail="20 of 20 steps")
    done = records[first].model_copy(update={"state": "verified", "verification": [completed]})
    findings = _with_fix(state, first)
    plain = cast(AuditState, {"findings": findings, "fixes": {**records, first: done}})

    assert stage.stacked(plain, bench, past_crashes_only=True) is None  # type: ignore[attr-defined]
    # without a run to verify on, nothing is stacked either
    moved = cast(
        AuditState,
        {
            "findings": findings,
            "fixes": {
                **records,
                first: done.model_copy(update={"verification": [MOVED]}),
            },
        },
    )
    no_run = replace(bench, runner=None)
    assert stage.stacked(moved, no_run, past_crashes_only=True) is None  # type: ignore[attr-defined]


def test_crash_fixes_of_one_severity_are_proposed_in_the_order_the_run_meets_them(
    tmp_path: Path,
) -> None:
    (tmp_path / "train.py").write_text(SCRIPT, encoding="utf-8")
    findings = [f for f in findings_of(tmp_path) if f.rule == "scalar-loss-indexed"]
    # the finding ids (content hashes) do not follow the lines
    for shuffled in (findings, findings[::-1]):
        records = propose(tmp_path, shuffled, findings[0].phase)
        lines = [next(f.line for f in findings if f.id == r.finding_id) for r in records]
        assert lines == [13, 14]
