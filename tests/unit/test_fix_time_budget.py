"""The fix stage's time limit is an end: a verification starts only when those measured so
far say it would end in time (a compiling one counted twice)."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchdoctor.agent.audit import AuditOptions, run_audit
from torchdoctor.agent.fixes import verify
from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.models import FixKind, SmokeRun
from torchdoctor.agent.fixes.time_budget import COMPILE_COST, TimeBudget
from torchdoctor.agent.fixes.verify import FixSpec, Verifier
from torchdoctor.agent.fixing import past_fix_time
from torchdoctor.agent.state import FixRecord


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def measured(budget: TimeBudget, clock: Clock, seconds: float, compiles: bool = False) -> None:
    with budget.measuring(compiles):
        clock.now += seconds


def test_without_a_deadline_everything_fits() -> None:
    clock = Clock()
    budget = TimeBudget(None, clock)
    measured(budget, clock, 1e6)
    assert budget.fits(compiles=True)
    assert not budget.past()


def test_the_first_verification_starts_whenever_time_is_left() -> None:
    clock = Clock()
    budget = TimeBudget(100.0, clock)
    clock.now = 99.0
    assert budget.fits(compiles=True)
    clock.now = 100.0
    assert budget.past()
    assert not budget.fits()


def test_the_median_so_far_decides_and_a_compiling_fix_costs_more() -> None:
    clock = Clock()
    budget = TimeBudget(380.0, clock)
    for seconds in (111.0, 57.0, 61.0, 22.0, 109.0):  # a GPT-2 fix stage's eager verifications
        measured(budget, clock, seconds)
    assert clock.now == 360.0
    clock.now = 300.0
    assert budget.fits()  # 300 + 61 <= 380
    assert not budget.fits(compiles=True)  # 300 + 61 * COMPILE_COST > 380
    clock.now = 380.0 - 61.0 * COMPILE_COST
    assert budget.fits(compiles=True)


def test_a_verification_that_raised_is_still_counted() -> None:
    clock = Clock()
    budget = TimeBudget(1000.0, clock)
    with pytest.raises(RuntimeError), budget.measuring():
        clock.now += 600.0
        raise RuntimeError("the sandbox died")
    assert not budget.fits()  # 600 + 600 > 1000


def test_once_a_fix_is_verified_the_closing_joint_check_is_kept_room_for() -> None:
    clock = Clock()
    budget = TimeBudget(530.0, clock)
    for seconds in (70.0, 71.0, 70.0):  # eager verifications of a GPT-2 fix stage on an H200
        measured(budget, clock, seconds)
    clock.now = 386.0
    assert budget.fits(compiles=True)  # 386 + 70 * COMPILE_COST <= 530: nothing to combine yet
    budget.keep_for_closing_check(compiles=False)
    assert budget.fits()  # 386 + 70 + 70 <= 530
    assert not budget.fits(compiles=True)  # 386 + 140 + 70 > 530: the joint check would overrun
    budget.keep_for_closing_check(compiles=True)
    assert not budget.fits()  # 386 + 70 + 140 > 530 once the joint check compiles
    budget.keep_for_closing_check(compiles=False)
    assert not budget.fits()  # a later eager fix does not make the joint check cheaper
    clock.now = 530.0 - 70.0 * (1 + COMPILE_COST)
    assert budget.fits()


def test_once_a_compiling_verification_is_measured_it_is_the_measure_of_compiling_ones() -> None:
    # H200, GPT-2 fix stage of 330 s: the compile fix verified in 75 s; its ladder's next rung
    # (another compiling verification) was refused at 76 s as 75 * 2, plus the closing
    # check's 75 * 2, would end past 330
    clock = Clock()
    budget = TimeBudget(330.0, clock)
    measured(budget, clock, 75.0, compiles=True)
    budget.keep_for_closing_check(compiles=True)
    clock.now = 76.0
    assert budget.fits(compiles=True)  # 76 + 75 + 75 <= 330
    assert budget.fits()  # an eager one: half a compiling one, 76 + 37.5 + 75
    clock.now = 181.0
    assert not budget.fits(compiles=True)  # 181 + 75 + 75 > 330
    measured(budget, clock, 20.0)  # an eager one measured: its own kind's figure from now on
    clock.now = 231.0
    assert budget.fits()  # 231 + 20 + 75 <= 330


def test_a_ladder_rung_of_the_only_verified_fix_keeps_no_room_for_a_joint_check() -> None:
    """GPT-2 on an H200: the compile fix verified in 116 s, 164 s of a 280 s stage left. A
    rung of its ladder changes that same fix, so with no other fix verified the stage ends
    with no joint check, and the rung fits (116 s); a new fix would need room for one."""
    clock = Clock()
    budget = TimeBudget(280.0, clock)
    measured(budget, clock, 116.0, compiles=True)
    budget.keep_for_closing_check(compiles=True)
    assert budget.fits(compiles=True, adds_a_fix=False)  # 116 + 116 <= 280
    assert not budget.fits(compiles=True)  # a second fix: 116 + 116 + 116 > 280
    budget.keep_for_closing_check(compiles=False)
    assert not budget.fits(compiles=True, adds_a_fix=False)  # two verified: the check runs


def _record(rule: str, seconds: float | None = None) -> FixRecord:
    return FixRecord(
        finding_id=f"TD-{rule}",
        phase=4,
        rule=rule,
        origin="codemod",
        kind=FixKind.PERFORMANCE,
        diff="",
        state="pending" if seconds is None else "verified",
        seconds=seconds,
    )


def test_an_audits_fix_time_counts_the_verifications_its_records_carry() -> None:
    """Read from the checkpointed records, not a clock: a resumed audit keeps what it spent."""
    assert past_fix_time([], _record("pin-memory-off"), 1.0) is None  # the first always starts
    spent = [_record("pin-memory-off", 60.0), _record("cudnn-benchmark-off", 40.0)]
    assert past_fix_time(spent, _record("persistent-workers-off"), 150.0) is None  # 100 + 50
    late = past_fix_time(spent, _record("persistent-workers-off"), 140.0)
    assert late is not None and "took 100 s of the 140 s allowed (--fix-time)" in late
    # a compiling fix is costed at twice the eager median until one compile is measured
    assert past_fix_time(spent, _record("no-torch-compile"), 190.0) is not None
    assert past_fix_time(spent, _record("no-torch-compile"), 200.0) is None


def test_a_fix_past_the_fix_time_stays_proposed_with_the_reason(tmp_path: Path) -> None:
    """Fixable findings, no run (each verification is static, well under a second): with
    a millisecond allowed, the first verification starts and the second does not."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text(TWO_FIXES)
    options = AuditOptions(target=project, write_ledger=False, fix=True, fix_time=0.001)
    said: list[str] = []
    findings = run_audit(
        options, lambda event: said.append(str(event.get("message")))
    ).report.findings
    fixed = {f.rule: f.fix for f in findings if f.fix is not None}
    assert {"zero-grad-missing", "softmax-without-dim"} <= set(fixed)
    steps = {rule: [v.step for v in fix.verification] for rule, fix in fixed.items()}
    started = [rule for rule, names in steps.items() if "fix-time" not in names]
    assert len(started) == 1
    for skipped in set(fixed) - set(started):
        assert steps[skipped] == ["fix-time"] and not fixed[skipped].verified
        assert "raise --fix-time" in fixed[skipped].verification[0].detail
    verifying = [m for m in said if m.startswith("verifying ")]
    assert [m.split()[1] for m in verifying] == started  # a fix not started is not "verifying"
    assert any(m.startswith(f"{skipped} (") and "not started" in m for m in said)


TWO_FIXES = """import torch
from torch import nn

model = nn.Linear(8, 3)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
data = torch.randn(64, 8)
target = torch.randint(0, 3, (64,))
for step in range(40):
    probs = nn.functional.softmax(model(data))
    loss = nn.functional.nll_loss(torch.log(probs), target)
    loss.backward()
    optimizer.step()
"""


class _Runs:
    """Timing runs that take `seconds` each on a fake clock, with step times whose interval
    straddles the minimum gain however many are made (pin_memory on a loader-bound step)."""

    def __init__(self, clock: Clock, seconds: float) -> None:
        self.clock, self.seconds, self.made = clock, seconds, 0

    def __call__(self, _runner: object, workspace: Path, *_a: object, **_k: object) -> SmokeRun:
        self.clock.now += self.seconds
        self.made += 1
        scale = (0.7, 1.4)[(self.made + 1) // 2 % 2] * (0.98 if workspace.name == "patched" else 1)
        return SmokeRun(ok=True, step_times_s=[scale * (1 + 0.01 * i) for i in range(19)])


def _undecided_speed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deadline: float | None
) -> tuple[str, int]:
    clock = Clock()
    runs = _Runs(clock, seconds=10.0)
    monkeypatch.setattr(verify, "smoke_run", runs)
    monkeypatch.setattr(verify.time, "monotonic", clock)
    root = tmp_path / "root"
    root.mkdir()
    baseline = SmokeRun(ok=True, step_times_s=[1.0 + 0.01 * i for i in range(19)], wall_s=10.0)
    verifier = Verifier(root, object(), ["python", "main.py"], baseline=baseline, deadline=deadline)  # type: ignore[arg-type]
    after = SmokeRun(ok=True, step_times_s=[0.98 * (1 + 0.01 * i) for i in range(19)], wall_s=10.0)
    codemod = codemod_for("dataloader-sync")
    assert codemod is not None
    step = verifier._speed(tmp_path / "patched", after, FixSpec.of(codemod))
    assert step.step == "speed-up" and not step.ok
    return step.detail, runs.made


def test_timing_pairs_stop_where_the_fix_time_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An H100 audit of a CIFAR trainer spent 297 s timing `pin_memory` with 240 s of fix time
    allowed: the limit only kept verifications from starting, not their timing runs."""
    detail, made = _undecided_speed(tmp_path, monkeypatch, deadline=45.0)
    assert made == 4  # two pairs of 20 s end by 40 s; a third would end at 60 s
    assert "undecided: 2 timing pair(s) made" in detail
    assert "about 20 s" in detail and "raise --fix-time" in detail


def test_without_a_deadline_the_most_repeats_allowed_are_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    detail, made = _undecided_speed(tmp_path, monkeypatch, deadline=None)
    assert made == 10  # five pairs: six runs a side with the smoke runs
    assert "after the most repeats allowed" in detail
