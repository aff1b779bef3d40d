"""`fixable` has one source, the codemod registry: `torchdoctor rules` reads it for every rule."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from torchdoctor.agent.checks.catalogue import catalogue
from torchdoctor.agent.cli import app
from torchdoctor.agent.fixes.codemods import all_codemods, fixable_rules


def test_every_rule_is_fixable_exactly_when_a_codemod_exists() -> None:
    listed = json.loads(CliRunner().invoke(app, ["rules", "--format", "json"]).stdout)
    assert {r["id"] for r in listed} == set(catalogue())
    codemods = set(all_codemods())
    assert {r["id"] for r in listed if r["fixable"]} == codemods == fixable_rules()
    table = CliRunner().invoke(app, ["rules"]).stdout.splitlines()[1:]
    fix_column = {line.split()[0]: line.split()[4] for line in table}
    assert {rule for rule, fix in fix_column.items() if fix == "yes"} == codemods


def test_every_codemod_fixes_a_known_rule_and_explain_says_so() -> None:
    assert set(all_codemods()) <= set(catalogue())
    rule = sorted(all_codemods())[0]
    assert "fix: yes" in CliRunner().invoke(app, ["rules", rule]).stdout
    unfixable = next(
        r for r, e in catalogue().items() if e.kind == "native" and r not in all_codemods()
    )
    assert "fix: no" in CliRunner().invoke(app, ["rules", unfixable]).stdout
