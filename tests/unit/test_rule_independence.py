"""A rule's findings do not depend on which other rules run with it.

Found in review: a rule that asked for the module-wide data flow while the engine's walk was
still indexing nodes cached a half-built analysis, and three other rules lost their findings on
the bundled example whenever it ran first.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.checks.engine import analyse_source
from torchdoctor.agent.checks.registry import all_rules

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("example", ["train_buggy.py", "train_lm_slow.py"])
def test_each_rule_alone_finds_what_it_finds_among_all(example: str) -> None:
    source = (EXAMPLES / example).read_text(encoding="utf-8")
    rules = all_rules()
    together = analyse_source(example, source, rules, EngineConfig())
    for rule in rules:
        alone = analyse_source(example, source, (rule,), EngineConfig())
        expected = sorted(f.line for f in together.findings if f.rule == rule.id)
        assert sorted(f.line for f in alone.findings) == expected, rule.id
