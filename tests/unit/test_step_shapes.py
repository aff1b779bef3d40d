"""The training-step codemods (bf16 autocast, model.compile, and the compile ladder's step
compiled as one graph) against step shapes seen in public training code: each fixture in
tests/fixtures/step_shapes names its shape (the code is written here). Per rule,
`NAME.RULE.after.py` is the exact fix, `NAME.RULE.reason` a refusal with that reason,
`NAME.RULE.quiet` a shape the rule does not report; a variant's files carry its anchor
(`NAME.no-torch-compile.compile_scope-step.after.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.shape_outcomes import assert_outcome, variant_suffix

SHAPES = Path(__file__).parents[1] / "fixtures" / "step_shapes"
STEP_GRAPH = {"compile_scope": "step"}
RULES: tuple[tuple[str, dict[str, str] | None], ...] = (
    ("no-amp", None),
    ("no-torch-compile", None),
    ("no-torch-compile", STEP_GRAPH),
)
CASES = [
    pytest.param(
        source.name.removesuffix(".py"),
        rule,
        variant,
        id=f"{source.stem}/{rule}{variant_suffix(variant)}",
    )
    for source in sorted(SHAPES.glob("*.py"))
    if ".after" not in source.name
    for rule, variant in RULES
]


def _outcome(name: str, rule: str, variant: dict[str, str] | None) -> str:
    for kind in ("after.py", "reason", "quiet"):
        if (SHAPES / f"{name}.{rule}{variant_suffix(variant)}.{kind}").exists():
            return kind
    if variant and (SHAPES / f"{name}.{rule}.quiet").exists():
        return "quiet"  # not reported: no variant either
    raise AssertionError(f"{name} has no expected outcome for {rule}{variant_suffix(variant)}")


@pytest.mark.parametrize(("name", "rule", "variant"), CASES)
def test_each_step_shape_is_fixed_exactly_refused_with_its_reason_or_not_reported(
    name: str, rule: str, variant: dict[str, str] | None
) -> None:
    assert_outcome(SHAPES, name, rule, _outcome(name, rule, variant), variant=variant)
