"""Overhead fixes (a per-step sync, an unfused optimizer) are measured on top of the other
verified fixes, after them, in the fix benchmark's pipeline and in the audit graph alike.

The verifier is scripted here (which workspace each fix is verified on is the point, not the
timing); the real sandboxed verification is in tests/integration/test_fix_verify.py."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar, cast

import pytest

from tests.fix_findings import findings_of
from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.fixes import pipeline, stacked
from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.diffs import apply_to_text, parse
from torchdoctor.agent.fixes.models import Patch
from torchdoctor.agent.fixes.verify import Claim, FixSpec, Verifier
from torchdoctor.agent.fixing import FixBench, is_overhead, propose, stacked_copy, verify_record
from torchdoctor.agent.graph import phases
from torchdoctor.agent.harness import Harness
from torchdoctor.agent.models import Finding, Fix, Status, Verification
from torchdoctor.agent.state import AuditState
from torchdoctor.sandbox.protocol import Sandbox

SCRIPT = Path(__file__).parents[1] / "fixtures" / "fixes_overhead" / "train.py"
OVERHEADS = {"host-sync-in-step", "unfused-optimizer"}
SANDBOX = cast(Sandbox, object())
"""Never called: the scripted verifier runs nothing."""


def audit(root: Path) -> list[Finding]:
    return findings_of(root)


class _Scripted(Verifier):
    """Every check passes; each verification is logged with the workspace it ran on and what
    that workspace's script contained."""

    log: ClassVar[list[tuple[str, Path, str]]] = []

    def __init__(self, root: Path, *args: Any, **kwargs: Any) -> None:
        super().__init__(root, *args, **kwargs)

    def verify(self, patch: Patch, claim: Claim, spec: FixSpec) -> list[Verification]:
        self.log.append((patch.rule, self.root, (self.root / "train.py").read_text()))
        return [Verification(step="speed-up", ok=True, detail="faster")]


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Path, str]]:
    """The pipeline verifies with `_Scripted` (alone and on a stack); its log, emptied."""
    _Scripted.log = []
    monkeypatch.setattr(pipeline, "Verifier", _Scripted)
    monkeypatch.setattr(stacked, "Verifier", _Scripted)
    monkeypatch.setattr(pipeline, "Harness", lambda *_a, **_k: object())
    return _Scripted.log


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    shutil.copy(SCRIPT, tmp_path / "train.py")
    return tmp_path


def test_the_overhead_codemods_are_the_per_step_host_costs() -> None:
    assert {r for r in OVERHEADS if is_overhead(r)} == OVERHEADS
    assert not is_overhead("no-torch-compile") and not is_overhead("no-amp")
    assert not is_overhead("no-such-rule")


def test_pipeline_measures_overhead_fixes_on_the_verified_ones(
    workspace: Path, scripted: list[tuple[str, Path, str]]
) -> None:
    findings = audit(workspace)
    assert OVERHEADS | {"no-torch-compile"} <= {f.rule for f in findings}
    out = {
        f.rule: f
        for f in pipeline.propose_and_verify(
            workspace,
            findings,
            SANDBOX,
            run_command=["python", "train.py"],
        )
    }
    order = [rule for rule, _root, _text in scripted]
    # the compile fix alone on the original; then each overhead fix once, on a copy holding
    # it; then the three together (one patch naming all)
    assert order[0] == "no-torch-compile"
    assert sorted(order[1:3]) == sorted(OVERHEADS)
    assert set(order[3].split("+")) == OVERHEADS | {"no-torch-compile"}
    assert scripted[0][1] == workspace and "compile" not in scripted[0][2]
    for _rule, root, text in scripted[1:3]:
        assert root != workspace and "model.compile()" in text  # the stack, not the original
    for rule in OVERHEADS:
        fix = out[rule].fix
        assert fix is not None and fix.verified and out[rule].status is Status.VERIFIED
        steps = [v.step for v in fix.verification]
        assert steps[0] == "on-verified-fixes" and "on-verified-fixes:speed-up" in steps
        assert "no-torch-compile" in fix.verification[0].detail
        # the diff is against the user's file, not the stack: it applies there, without compile
        [patched] = parse(fix.diff)
        assert "model.compile()" not in apply_to_text(SCRIPT.read_text(), patched)
    assert (workspace / "train.py").read_text() == SCRIPT.read_text()


def test_pipeline_without_other_verified_fixes_measures_them_on_the_original(
    workspace: Path, scripted: list[tuple[str, Path, str]]
) -> None:
    findings = [f for f in audit(workspace) if f.rule in OVERHEADS]
    out = pipeline.propose_and_verify(
        workspace,
        findings,
        SANDBOX,
        run_command=["python", "train.py"],
    )
    assert [root for _rule, root, _text in scripted[:2]] == [workspace, workspace]
    assert all(f.fix is not None and f.fix.verified for f in out)
    assert all(f.fix.verification[0].step == "speed-up" for f in out if f.fix)


def test_pipeline_past_its_deadline_leaves_overhead_fixes_proposed(
    workspace: Path, scripted: list[tuple[str, Path, str]]
) -> None:
    findings = audit(workspace)
    out = {
        f.rule: f
        for f in pipeline.propose_and_verify(
            workspace,
            findings,
            SANDBOX,
            run_command=["python", "train.py"],
            deadline=0.0,
        )
    }
    assert scripted == []
    for rule in OVERHEADS:
        fix = out[rule].fix
        assert fix is not None and not fix.verified and fix.diff
        assert [v.step for v in fix.verification] == ["time-budget"]


def test_graph_proposes_overhead_fixes_last_in_their_phase(workspace: Path) -> None:
    findings = audit(workspace)
    by_phase: dict[int, list[str]] = {}
    for phase in sorted({f.phase for f in findings}):
        by_phase[phase] = [r.rule for r in propose(workspace, findings, phase)]
    for rules in by_phase.values():
        flags = [is_overhead(r) for r in rules]
        assert flags == sorted(flags)  # no overhead fix before another one
    assert any(set(rules) >= OVERHEADS | {"no-torch-compile"} for rules in by_phase.values()), (
        by_phase
    )


def test_stacked_copy_holds_the_phase_s_verified_fixes(workspace: Path) -> None:
    findings = {f.rule: f for f in audit(workspace)}
    compile_finding = findings["no-torch-compile"]
    patch = pipeline.propose_patch(workspace, compile_finding)
    assert patch is not None and codemod_for("no-torch-compile") is not None
    fix = pipeline._proposed(compile_finding, patch.diff, []).fix
    assert fix is not None
    verified = compile_finding.model_copy(update={"fix": fix})
    assert stacked_copy(workspace, [], []) is None
    made = stacked_copy(workspace, [], [verified])
    assert made is not None
    texts, rules = made
    assert rules == ["no-torch-compile"] and "model.compile()" in texts["train.py"]
    stale = "--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-nothing\n+else\n"
    conflicting = verified.model_copy(update={"fix": fix.model_copy(update={"diff": stale})})
    assert stacked_copy(workspace, [], [conflicting]) is None


def test_graph_measures_an_overhead_fix_on_the_phase_s_verified_fixes(workspace: Path) -> None:
    findings = audit(workspace)
    phase = next(f.phase for f in findings if f.rule == "no-torch-compile")
    records = {r.finding_id: r for r in propose(workspace, findings, phase)}
    compile_id = next(i for i, r in records.items() if r.rule == "no-torch-compile")
    verified = [
        f.model_copy(update={"fix": Fix(diff=records[f.id].diff, verified=True)})
        if f.id == compile_id
        else f
        for f in findings
    ]
    records[compile_id] = records[compile_id].model_copy(update={"state": "verified"})
    state = cast(AuditState, {"findings": verified, "fixes": records})
    stage = next(p for p in phases() if p.number == phase)
    runner = cast(Harness, object())
    bench = FixBench(workspace, runner, ["python", "train.py"], 20, EngineConfig(), ["train.py"])
    made = stage.stacked(state, bench)
    assert made is not None
    texts, rules = made
    assert rules == ["no-torch-compile"] and "model.compile()" in texts["train.py"]
    # no run to measure on: the working copy as it is
    assert stage.stacked(state, replace(bench, runner=None)) is None
    # an adopted fix is in the working copy already: nothing to stack on top of it
    held = {**records, compile_id: records[compile_id].model_copy(update={"adopted": True})}
    adopted_state = cast(AuditState, {"findings": verified, "fixes": held})
    assert stage.stacked(adopted_state, bench) is None
    # the check a stacked verification starts with names the fixes beneath it
    overhead = next(f for f in findings if f.rule == "host-sync-in-step")
    done = verify_record(
        replace(bench, runner=None, run_command=None),
        texts,
        None,
        overhead,
        records[overhead.id],
        rules,
    )
    assert done.finding.fix is not None
    first = done.finding.fix.verification[0]
    assert first.step == "on-verified-fixes" and "no-torch-compile" in first.detail
