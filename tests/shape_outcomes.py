"""One check for the codemod shape collections (tests/fixtures/step_shapes, perf_shapes): a
shape's finding, fed to its rule's codemod with the anchors the rule emits, becomes exactly
`NAME.RULE.after.py` (which parses and is not reported again), is refused with the reason in
`NAME.RULE.reason`, or (`quiet`) is not reported at all."""

from __future__ import annotations

import ast
from pathlib import Path

from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.models import FixTarget
from torchdoctor.agent.models import Finding


def findings(source: str, rule: str, config: EngineConfig | None = None) -> list[Finding]:
    result = analyse_files([("m.py", source)], config, workers=1)
    return [f for f in result.all_findings() if f.rule == rule]


def assert_outcome(
    shapes: Path,
    name: str,
    rule: str,
    outcome: str,
    config: EngineConfig | None = None,
    variant: dict[str, str] | None = None,
) -> None:
    """`variant`: anchors a costlier form of the fix adds (the compile ladder's), its outcome
    files named `NAME.RULE.KEY-VALUE.KIND`."""
    expected = f"{rule}{variant_suffix(variant)}"
    source = (shapes / f"{name}.py").read_text()
    found = findings(source, rule, config)
    if outcome == "quiet":
        assert not found
        return
    assert found
    finding = found[0]
    target = FixTarget(
        rule=rule,
        file="m.py",
        line=finding.line,
        end_line=finding.end_line,
        data={**finding.data, **(variant or {})},
    )
    codemod = codemod_for(rule)
    assert codemod is not None
    fixed = codemod.transform(source, target)
    if outcome == "reason":
        assert fixed is None
        reason = codemod.explain(source, target)
        assert reason is not None
        assert reason.strip() == (shapes / f"{name}.{expected}.reason").read_text().strip()
        return
    assert fixed == (shapes / f"{name}.{expected}.after.py").read_text()
    ast.parse(fixed)
    assert not findings(fixed, rule, config)  # every place the rule named is fixed


def variant_suffix(variant: dict[str, str] | None) -> str:
    return "".join(f".{key}-{value}" for key, value in sorted((variant or {}).items()))
