"""Rule fixtures marked with `# expect: RULE` on the lines the rule must report and
`# related: RULE` on the places a finding names as related locations (advice said once per
project or file; a folder is a multi-file project); shared by the rule test modules so the
convention lives in one place."""

from __future__ import annotations

import re
from pathlib import Path

from torchdoctor.agent.checks.advice_scope import ONCE_PER_FILE, ONCE_PER_PROJECT
from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.checks.engine import analyse_files


def load_case(case: Path) -> list[tuple[str, str]]:
    if case.is_dir():
        return [(p.relative_to(case).as_posix(), p.read_text()) for p in sorted(case.rglob("*.py"))]
    return [(case.name, case.read_text())]


def expected_lines(
    files: list[tuple[str, str]], rule: str, kind: str = "expect"
) -> set[tuple[str, int]]:
    marker = re.compile(rf"#\s*{kind}:\s*{re.escape(rule)}\b")
    return {
        (path, number)
        for path, text in files
        for number, line in enumerate(text.splitlines(), start=1)
        if marker.search(line)
    }


def assert_reports_exactly_the_marked_lines(
    rule: str, case: Path, workers: int | None = None
) -> None:
    """Positive cases carry at least one marker, negative ones none; the rule alone must
    report exactly the marked (file, line) pairs."""
    files = load_case(case)
    expected = expected_lines(files, rule)
    if case.name.startswith("positive_"):
        assert expected, f"{case} has no '# expect: {rule}' marker"
    else:
        assert not expected, f"negative fixture {case} carries an expect marker"
    config = EngineConfig(select=frozenset({rule}))
    result = (
        analyse_files(files, config)
        if workers is None
        else analyse_files(files, config, workers=workers)
    )
    # a rule that raises loses its findings with only a note to say so: never on a fixture
    failures = [r.note for r in result.files if r.note and "failed here" in r.note]
    assert not failures, failures
    reported = [f for f in result.all_findings() if f.rule == rule]
    assert {(f.file, f.line) for f in reported} == expected
    related = {(p["file"], p["line"]) for f in reported for p in f.data.get("related", [])}
    if rule in ONCE_PER_PROJECT | ONCE_PER_FILE:  # leaks' related sources: their own tests
        assert related == expected_lines(files, rule, "related")
