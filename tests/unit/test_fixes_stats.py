"""Trajectory tolerance and the speed-up rule (median gain > 2x IQR and > 3%)."""

from __future__ import annotations

import math

import pytest

from torchdoctor.agent.fixes.stats import speed_up, trajectories_match


def test_identical_trajectories_match_exactly() -> None:
    ok, detail = trajectories_match([1.0, 0.5, 0.25], [1.0, 0.5, 0.25], 0.0)
    assert ok and "0.00e+00" in detail


def test_a_deviation_beyond_tolerance_is_reported_with_its_step() -> None:
    ok, detail = trajectories_match([1.0, 0.5, 0.25], [1.0, 0.5, 0.3], 2e-2)
    assert not ok and "step 2" in detail


def test_bf16_level_noise_is_within_the_precision_tolerance() -> None:
    before = [2.0, 1.5, 1.2]
    assert trajectories_match(before, [v * (1 + 5e-3) for v in before], 2e-2)[0]


def test_length_mismatch_and_nan_after_the_fix_fail() -> None:
    assert not trajectories_match([1.0, 2.0], [1.0], 1.0)[0]
    assert not trajectories_match([1.0, 2.0], [1.0, math.nan], 1.0)[0]


def test_a_clear_speed_up_is_significant() -> None:
    before = [0.100, 0.101, 0.099, 0.100, 0.102, 0.098]
    after = [0.050, 0.051, 0.049, 0.050, 0.052, 0.048]
    result = speed_up(before, after)
    assert result.significant and result.improvement == pytest.approx(0.5)


def test_a_gain_inside_the_noise_is_not_significant() -> None:
    before = [0.10, 0.14, 0.08, 0.12, 0.09, 0.13]
    after = [0.095, 0.135, 0.075, 0.115, 0.085, 0.125]
    assert not speed_up(before, after).significant


def test_a_tiny_but_steady_gain_under_three_percent_is_not_significant() -> None:
    before = [0.1000] * 6
    after = [0.0990] * 6
    assert not speed_up(before, after).significant


def test_too_few_samples_are_refused() -> None:
    with pytest.raises(ValueError):
        speed_up([0.1, 0.1], [0.05, 0.05])
