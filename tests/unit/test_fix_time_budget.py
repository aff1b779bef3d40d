"""The fix stage's time limit is an end: a verification starts only when those measured so
far say it would end in time (a compiling one counted twice)."""

from __future__ import annotations

import pytest

from torchdoctor.agent.fixes.time_budget import COMPILE_COST, TimeBudget


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
