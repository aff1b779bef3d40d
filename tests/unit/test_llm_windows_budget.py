"""Code windows around evidence, and the per-audit token/cost budget."""

from __future__ import annotations

import pytest

from torchdoctor.agent.reasoning.llm.budget import Budget, BudgetExhausted
from torchdoctor.agent.reasoning.llm.config import ModelPrice
from torchdoctor.agent.reasoning.llm.windows import Location, merge_windows, select_windows

LINES = [f"line_{n} = {n}" for n in range(1, 201)]
SOURCES = {"a.py": LINES, "b.py": ["import torch", "def f():", "    return 1", "class M:", "  x=1"]}


def test_nearby_locations_merge_into_one_window() -> None:
    sel = select_windows(
        [Location("a.py", 50, 50), Location("a.py", 55, 55)],
        ["a.py"],
        SOURCES.get,
        context=3,
        max_lines=100,
    )
    assert [(w.start, w.end) for w in sel.windows] == [(47, 58)]
    assert sel.windows[0].render().splitlines()[0] == "47|line_47 = 47"


def test_windows_stop_at_the_line_cap_and_count_what_was_left_out() -> None:
    locations = [Location("a.py", n, n) for n in range(10, 200, 20)]
    sel = select_windows(locations, ["a.py"], SOURCES.get, context=5, max_lines=30)
    assert sel.line_count <= 30 and sel.omitted_locations == len(locations) - 2


def test_a_long_construct_is_shown_by_its_first_lines() -> None:
    sel = select_windows([Location("a.py", 20, 190)], ["a.py"], SOURCES.get, 2, 200)
    assert sel.line_count == 2 * 2 + 24 + 1


def test_merged_windows_show_each_line_once_and_skip_blank_lines() -> None:
    sources = {"a.py": LINES, "c.py": ["x = 1", "", "y = 2"]}
    first = select_windows([Location("a.py", 50, 50)], ["a.py"], sources.get, 3, 100)
    second = select_windows([Location("a.py", 52, 52)], ["a.py"], sources.get, 3, 100)
    third = select_windows([Location("c.py", 1, 3)], ["c.py"], sources.get, 0, 100)
    merged = merge_windows([*first.windows, *second.windows, *third.windows])
    assert [(w.file, w.start, w.end) for w in merged] == [("a.py", 47, 55), ("c.py", 1, 3)]
    text = merged[0].render()
    assert text.count("line_50 = 50") == 1 and len(text.splitlines()) == 9
    assert merged[1].render() == "1|x = 1\n3|y = 2"


def test_no_located_evidence_gives_an_outline() -> None:
    sel = select_windows([], ["b.py"], SOURCES.get, context=3, max_lines=50)
    assert sel.outline and sel.windows[0].numbers == (1, 2, 4)


def test_the_budget_reserves_the_worst_case_and_settles_the_real_usage() -> None:
    budget = Budget(1_000, None, None)
    first = budget.reserve(300, 400)
    assert budget.available_tokens() == 300
    with pytest.raises(BudgetExhausted):
        budget.reserve(200, 200)
    budget.settle(first, 300, 50)
    budget.reserve(200, 200)
    assert budget.prompt_tokens == 300 and budget.cost_label() == "unknown"


def test_a_cost_budget_needs_a_price_and_stops_spending() -> None:
    budget = Budget(10**9, 0.001, ModelPrice(input_per_mtok=1.0, output_per_mtok=1.0))
    budget.settle(budget.reserve(500, 200), 500, 200)
    assert budget.cost_label() == "0.000700"
    with pytest.raises(BudgetExhausted, match="cost budget"):
        budget.reserve(500, 200)
