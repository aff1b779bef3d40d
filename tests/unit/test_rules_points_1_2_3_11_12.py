"""Every rule of checklist points 1, 2, 3, 11 and 12 against its fixtures.

Fixtures live in tests/fixtures/rules/<rule-id>/: each `positive_*.py` marks the lines where
the rule must report with `# expect: <rule-id>`; each `negative_*.py` is a near miss on which
the rule must stay silent. The engine runs with only the rule under test selected (opt-in rules
included), so other rules cannot mask or add findings.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from agent.checks.base import EngineConfig
from agent.checks.engine import analyse_files
from agent.checks.registry import rules_by_id

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rules"
POINTS = {1, 2, 3, 11, 12}
# Rules of these points owned by other modules (manifest and syntax checks) with no fixtures here.
FOREIGN = {"syntax-error", "vulnerable-torch-pin", "unpinned-dependencies"}
_EXPECT = re.compile(r"#\s*expect:\s*([\w-]+(?:\s*,\s*[\w-]+)*)")
_DOC_PARTS = ("Detects", "Why it matters:", "Example:", "Fix:")


def _our_rules() -> list[str]:
    return sorted(
        rule_id
        for rule_id, rule in rules_by_id().items()
        if rule.point in POINTS and rule_id not in FOREIGN and (FIXTURES / rule_id).is_dir()
    )


def _fixture_files() -> list[Path]:
    return sorted(
        path
        for rule_id in _our_rules()
        for path in (FIXTURES / rule_id).glob("*.py")
    )


def _expected(path: Path, rule_id: str) -> list[int]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [
        number
        for number, text in enumerate(lines, start=1)
        if (m := _EXPECT.search(text)) and rule_id in [r.strip() for r in m.group(1).split(",")]
    ]


def _found(path: Path, rule_id: str) -> list[int]:
    config = EngineConfig(select=frozenset({rule_id}))
    result = analyse_files([(path.name, path.read_text(encoding="utf-8"))], config, workers=1)
    return sorted(f.line for f in result.all_findings() if f.rule == rule_id)


@pytest.mark.parametrize(
    "path", _fixture_files(), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_rule_reports_exactly_the_marked_lines(path: Path) -> None:
    rule_id = path.parent.name
    expected = _expected(path, rule_id)
    if path.name.startswith("positive_"):
        assert expected, f"{path} has no '# expect: {rule_id}' marker"
    else:
        assert path.name.startswith("negative_"), f"unexpected fixture name {path.name}"
        assert not expected
    assert _found(path, rule_id) == expected


@pytest.mark.parametrize("rule_id", _our_rules())
def test_rule_is_documented_and_has_both_kinds_of_fixture(rule_id: str) -> None:
    rule = rules_by_id()[rule_id]
    doc = inspect.cleandoc(rule.__doc__ or "")
    for part in _DOC_PARTS:
        assert part in doc, f"{rule_id}: docstring lacks {part!r}"
    names = [p.name for p in (FIXTURES / rule_id).glob("*.py")]
    assert any(n.startswith("positive_") for n in names), f"{rule_id}: no positive fixture"
    assert any(n.startswith("negative_") for n in names), f"{rule_id}: no negative fixture"
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", rule_id)
    assert rule.items and all(item.split(".")[0] == str(rule.point) for item in rule.items)


def test_points_have_the_planned_number_of_rules() -> None:
    by_point: dict[int, int] = {}
    for rule_id in _our_rules():
        point = rules_by_id()[rule_id].point
        by_point[point] = by_point.get(point, 0) + 1
    assert by_point.get(1, 0) >= 8 and by_point.get(3, 0) >= 8
    assert all(by_point.get(p, 0) >= 3 for p in (2, 11, 12))
