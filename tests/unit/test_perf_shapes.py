"""The performance codemods (fused optimizers, DataLoader workers and pinning, channels_last,
cudnn.benchmark, CUDA graphs for one-sample inference) against shapes seen in public code:
each fixture in tests/fixtures/perf_shapes names its shape in its header (the code is
written here). Per rule, `NAME.RULE.after.py` is the exact fix and `NAME.RULE.reason` a
refusal with that reason; the finding is the rule's own, with the anchors it emits (the
other optimizers of the file arrive as its `related` places)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.shape_outcomes import assert_outcome
from torchdoctor.agent.checks.base import EngineConfig

SHAPES = Path(__file__).parents[1] / "fixtures" / "perf_shapes"
EVERY_RULE = EngineConfig(select=frozenset({"all"}))  # channels_last and CUDA graphs opt in


def _outcomes() -> list[tuple[str, str, str]]:
    found = []
    for path in sorted(SHAPES.iterdir()):
        for kind in ("after.py", "reason"):
            if path.name.endswith(f".{kind}"):
                name, rule = path.name.removesuffix(f".{kind}").split(".")
                found.append((name, rule, kind))
    return found


@pytest.mark.parametrize(
    ("name", "rule", "kind"), [pytest.param(*o, id=f"{o[0]}/{o[1]}") for o in _outcomes()]
)
def test_each_perf_shape_is_fixed_exactly_or_refused_with_its_reason(
    name: str, rule: str, kind: str
) -> None:
    assert_outcome(SHAPES, name, rule, kind, EVERY_RULE)
