"""The checklist is data: 5 phases, 12 points, 50 items, each covered by something."""

from __future__ import annotations

from torchdoctor.agent.checklist import (
    ITEMS,
    ITEMS_BY_ID,
    PHASES,
    POINTS,
    checks_for,
    items_of_point,
)
from torchdoctor.agent.checks.registry import all_rules


def test_shape_of_the_checklist() -> None:
    assert len(PHASES) == 5
    assert len(POINTS) == 12
    assert len(ITEMS) == 50
    assert len(ITEMS_BY_ID) == 50, "item ids are unique"
    assert [p.points for p in PHASES] == [(1, 2), (3, 4), (5,), (6, 7, 8), (9, 10, 11, 12)]


def test_items_are_numbered_within_their_point_and_bilingual() -> None:
    for point in POINTS:
        items = items_of_point(point.number)
        assert items, f"point {point.number} has items"
        assert [i.id for i in items] == [f"{point.number}.{n}" for n in range(1, len(items) + 1)]
        for item in items:
            assert item.title_en and item.title_fr
            assert item.phase == point.phase


def test_every_rule_covers_items_of_its_own_point() -> None:
    for rule in all_rules():
        assert rule.items, f"{rule.id} covers no item"
        for item_id in rule.items:
            assert ITEMS_BY_ID[item_id].point == rule.point, f"{rule.id} -> {item_id}"


def test_checks_for_joins_rules_and_item_checks() -> None:
    checks = checks_for("4.3")
    assert "rule:zero-grad-missing" in checks
    assert "probe:gradients" in checks
