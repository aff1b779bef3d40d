"""manual-attention on its fixtures: exact lines on positives, silence on near misses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from torchdoctor.agent.checks.engine import analyse_files

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rules" / "manual-attention"
EXPECT = re.compile(r"#\s*expect:\s*manual-attention")


@pytest.mark.parametrize("fixture", sorted(FIXTURES.glob("*.py")), ids=lambda p: p.name)
def test_fixture(fixture: Path) -> None:
    text = fixture.read_text()
    expected = {n for n, line in enumerate(text.splitlines(), 1) if EXPECT.search(line)}
    found = {
        f.line
        for f in analyse_files([(fixture.name, text)]).all_findings()
        if f.rule == "manual-attention"
    }
    assert found == expected
    assert bool(expected) == fixture.name.startswith("positive")
