"""The performance codemods (fused optimizers, DataLoader workers and pinning, channels_last,
cudnn.benchmark, CUDA graphs for one-sample inference) against shapes seen in public code:
each fixture in tests/fixtures/perf_shapes names its shape in its header (the code is
written here). Per rule, `NAME.RULE.after.py` is the exact fix and `NAME.RULE.reason` a
refusal with that reason; the finding is the rule's own, with the anchors it emits (the
other optimizers of the file arrive as its `related` places)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.models import FixTarget
from torchdoctor.agent.models import Finding

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


def _findings(source: str, rule: str) -> list[Finding]:
    result = analyse_files([("m.py", source)], EVERY_RULE, workers=1)
    return [f for f in result.all_findings() if f.rule == rule]


@pytest.mark.parametrize(
    ("name", "rule", "kind"), [pytest.param(*o, id=f"{o[0]}/{o[1]}") for o in _outcomes()]
)
def test_each_perf_shape_is_fixed_exactly_or_refused_with_its_reason(
    name: str, rule: str, kind: str
) -> None:
    source = (SHAPES / f"{name}.py").read_text()
    found = _findings(source, rule)
    assert found
    finding = found[0]
    target = FixTarget(
        rule=rule, file="m.py", line=finding.line, end_line=finding.end_line, data=finding.data
    )
    codemod = codemod_for(rule)
    assert codemod is not None
    fixed = codemod.transform(source, target)
    if kind == "reason":
        assert fixed is None
        reason = codemod.explain(source, target)
        assert reason is not None
        assert reason.strip() == (SHAPES / f"{name}.{rule}.reason").read_text().strip()
        return
    assert fixed == (SHAPES / f"{name}.{rule}.after.py").read_text()
    ast.parse(fixed)
    assert not _findings(fixed, rule)  # every place the rule named is fixed, not just the first
