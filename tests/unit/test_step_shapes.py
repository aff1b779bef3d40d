"""The training-step codemods (bf16 autocast, model.compile) against step shapes seen in public
training code: each fixture in tests/fixtures/step_shapes names its shape (the code is written
here). Per rule, `NAME.RULE.after.py` is the exact fix, `NAME.RULE.reason` a refusal with
that reason, `NAME.RULE.quiet` a shape the rule does not report."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.shape_outcomes import assert_outcome

SHAPES = Path(__file__).parents[1] / "fixtures" / "step_shapes"
RULES = ("no-amp", "no-torch-compile")
CASES = [
    pytest.param(source.name.removesuffix(".py"), rule, id=f"{source.stem}/{rule}")
    for source in sorted(SHAPES.glob("*.py"))
    if ".after" not in source.name
    for rule in RULES
]


def _outcome(name: str, rule: str) -> str:
    for kind in ("after.py", "reason", "quiet"):
        if (SHAPES / f"{name}.{rule}.{kind}").exists():
            return kind
    raise AssertionError(f"{name} has no expected outcome for {rule}")


@pytest.mark.parametrize(("name", "rule"), CASES)
def test_each_step_shape_is_fixed_exactly_refused_with_its_reason_or_not_reported(
    name: str, rule: str
) -> None:
    assert_outcome(SHAPES, name, rule, _outcome(name, rule))
