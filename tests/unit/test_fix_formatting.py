"""Fixes formatted as the project formats its code: ruff format on the changed lines only, and
only when the project uses ruff; the project's config is read, never handed to ruff."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from torchdoctor.agent.fixes.formatting import (
    changed_ranges,
    format_changed_lines,
    ruff_settings,
)
from torchdoctor.agent.fixes.pipeline import propose_patch
from torchdoctor.agent.models import Evidence, Finding, Severity

SINGLE_QUOTES = '[tool.ruff]\nline-length = 100\n\n[tool.ruff.format]\nquote-style = "single"\n'
BEFORE = 'x = [1,2,3]\nprint( "a" )\n\n\ndef f():\n    return 1\n'
AFTER = BEFORE.replace("    return 1\n", '    y = {"a":1}\n    return 1\n')


def test_only_the_changed_lines_are_formatted(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(SINGLE_QUOTES)
    formatted = format_changed_lines(tmp_path, BEFORE, AFTER)
    assert formatted == BEFORE.replace("    return 1\n", "    y = {'a': 1}\n    return 1\n")


def test_a_project_without_ruff_keeps_the_codemod_text(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    assert format_changed_lines(tmp_path, BEFORE, AFTER) == AFTER
    assert ruff_settings(tmp_path) is None


@pytest.mark.parametrize("name", ["ruff.toml", ".ruff.toml"])
def test_a_ruff_toml_counts_too(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text('[format]\nquote-style = "single"\n')
    assert ruff_settings(tmp_path) == ['format.quote-style = "single"']


def test_hostile_settings_are_dropped_and_nothing_is_followed(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.ruff]\nextend = "/etc/passwd"\nline-length = "100\\"\\nextend = 1"\n'
        'cache-dir = "/tmp/x"\n[tool.ruff.format]\nquote-style = "single\\"; rm"\n'
        "indent-width = 4\nskip-magic-trailing-comma = true\n"
    )
    assert ruff_settings(tmp_path) == ["format.skip-magic-trailing-comma = true"]
    (tmp_path / "pyproject.toml").write_text("tool = 3\n")
    assert ruff_settings(tmp_path) is None
    (tmp_path / "pyproject.toml").write_text("[tool.ruff\n")
    assert format_changed_lines(tmp_path, BEFORE, AFTER) == AFTER


def test_changed_ranges_are_the_new_lines() -> None:
    assert changed_ranges(BEFORE, AFTER) == [(6, 6)]
    assert changed_ranges("a\nb\n", "z\nb\nc\n") == [(1, 1), (3, 3)]
    assert changed_ranges("a\n", "a\n") == []


def test_a_codemod_patch_follows_the_projects_quote_style(tmp_path: Path) -> None:
    fixture = Path(__file__).parents[1] / "fixtures" / "fixes" / "tf32-off"
    source = (fixture / "before.py").read_text()
    line = json.loads((fixture / "target.json").read_text())["line"]
    (tmp_path / "train.py").write_text(source)
    (tmp_path / "pyproject.toml").write_text(SINGLE_QUOTES)
    finding = Finding(
        id="f1",
        rule="tf32-off",
        checkpoint=6,
        phase=4,
        severity=Severity.LOW,
        title="TF32 off",
        file="train.py",
        line=line,
        end_line=line,
        evidence=[Evidence(source="torchdoctor-static", message="tf32 off")],
    )
    patch = propose_patch(tmp_path, finding)
    assert patch is not None
    added = [line for line in patch.diff.splitlines() if line.startswith("+") and "(" in line]
    assert added and all('"' not in line for line in added), patch.diff
    removed = [line for line in patch.diff.splitlines() if line.startswith("-") and '"' in line]
    assert removed == [], "lines the fix did not change keep their own quotes"
