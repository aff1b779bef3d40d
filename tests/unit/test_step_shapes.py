"""The training-step codemods (bf16 autocast, model.compile) against step shapes seen in public
training code: each fixture in tests/fixtures/step_shapes names its shape (the code is written
here). Per rule, `NAME.RULE.after.py` is the exact fix, `NAME.RULE.reason` a refusal with
that reason, `NAME.RULE.quiet` a shape the rule does not report."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.models import FixTarget

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
    source = (SHAPES / f"{name}.py").read_text()
    found = [
        f for f in analyse_files([("m.py", source)], workers=1).all_findings() if f.rule == rule
    ]
    outcome = _outcome(name, rule)
    if outcome == "quiet":
        assert not found
        return
    assert found
    finding = found[0]
    target = FixTarget(
        rule=rule, file="m.py", line=finding.line, end_line=finding.end_line, data=finding.data
    )
    codemod = codemod_for(rule)
    assert codemod is not None
    fixed = codemod.transform(source, target)
    if outcome == "reason":
        assert fixed is None
        reason = codemod.explain(source, target)
        assert reason is not None
        assert reason.strip() == (SHAPES / f"{name}.{rule}.reason").read_text().strip()
        return
    assert fixed == (SHAPES / f"{name}.{rule}.after.py").read_text()
    ast.parse(fixed)
    after = analyse_files([("m.py", fixed)], workers=1).all_findings()
    assert not [f for f in after if f.rule == rule]  # the fixed step is not reported again
