"""The engine skips a rule in a module without one of its `triggers`: never at the cost of a
finding, a published fact or an applicability answer the rule would have given there."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import ClassVar

import pytest

from tests.rule_fixtures import load_case
from torchdoctor.agent.checks import dataflow
from torchdoctor.agent.checks.base import EngineConfig, ModuleContext, Rule
from torchdoctor.agent.checks.engine import StaticResult, analyse_files, analyse_source
from torchdoctor.agent.checks.loops import TRAINING_LOOP_TEXT
from torchdoctor.agent.checks.module_text import ModuleText, Triggers, TriggerTable
from torchdoctor.agent.checks.registry import all_rules
from torchdoctor.agent.models import Severity

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rules"
GATED = [rule for rule in all_rules() if rule.triggers]


def _outcome(result: StaticResult) -> tuple[object, ...]:
    findings = sorted((f.file, f.line, f.rule, f.message) for f in result.all_findings())
    facts = {r.path: r.facts for r in result.files}
    applicable = {r.path: sorted(r.applicable) for r in result.files}
    return findings, facts, applicable, sorted(result.project_applicable)


@pytest.mark.parametrize("rule", GATED, ids=[rule.id for rule in GATED])
def test_the_gate_changes_nothing_on_the_rules_fixtures(
    rule: type[Rule], monkeypatch: pytest.MonkeyPatch
) -> None:
    cases = sorted((FIXTURES / rule.id).iterdir()) if (FIXTURES / rule.id).is_dir() else []
    assert any(c.name.startswith("positive_") for c in cases), f"{rule.id} has no fixture"
    config = EngineConfig(select=frozenset({rule.id}))
    gated = [_outcome(analyse_files(load_case(case), config)) for case in cases]
    monkeypatch.setattr(TriggerTable, "live", lambda self, source: [True] * self._size)
    ungated = [_outcome(analyse_files(load_case(case), config)) for case in cases]
    assert gated == ungated


class _NeedsBackward(Rule):
    """A test rule whose every check asks the data flow, and only where `backward` occurs."""

    id = "test-needs-backward"
    point = 0
    severity = Severity.LOW
    title = "test"
    items: ClassVar[tuple[str, ...]] = ()
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    triggers = Triggers(("backward",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert ctx.flow is not None

    def finish(self, ctx: ModuleContext) -> None:
        if ctx.flow.may_call_models:
            ctx.report(self, ctx.tree, "found")


class _AppliesWithBackward(_NeedsBackward):
    id = "test-applies-with-backward"

    def applies(self, ctx: ModuleContext) -> bool:
        return "backward" in ctx.source


def test_a_module_without_a_trigger_skips_the_rule_and_its_semantic_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def never(self: object, ctx: ModuleContext) -> None:
        raise AssertionError("the data flow was built for a skipped rule")

    monkeypatch.setattr(dataflow.DataFlow, "__init__", never)
    source = "import torch\nmodel = torch.nn.Linear(2, 2)\nprint(model(torch.ones(2)))\n"
    result = analyse_source("m.py", source, (_NeedsBackward, _AppliesWithBackward), EngineConfig())
    assert result.note is None and not result.findings
    # the default `applies` stays applicable (checked, nothing found); an override says no
    assert _NeedsBackward.id in result.applicable
    assert _AppliesWithBackward.id not in result.applicable


def test_a_module_with_a_trigger_runs_the_rule() -> None:
    source = "import torch\nmodel = torch.nn.Linear(2, 2)\nmodel(torch.ones(2)).sum().backward()\n"
    result = analyse_source("m.py", source, (_AppliesWithBackward,), EngineConfig())
    assert [f.message for f in result.findings] == ["found"]
    assert _AppliesWithBackward.id in result.applicable


def test_triggers_match_words_lowered_words_and_non_ascii_identifiers() -> None:
    loss = Triggers(("cross_entropy",), lowered=("loss",), for_identifiers=True)
    assert loss.found_in("F.cross_entropy(x, y)")
    assert loss.found_in("self.Criterion_LOSS = nn.L1Loss()")
    assert not loss.found_in("x = torch.ones(3)")
    # the parser reads `ｌoss` as `loss` (NFKC): a non-ASCII text is never ruled out
    assert loss.found_in("ｌoss = 1")
    assert not Triggers(("backward",)).found_in("ｂackward = 1")
    assert not Triggers() and Triggers(("a",), lowered=("b",)).found_in("B")


def _fixture_texts() -> list[str]:
    """Every module of every rule's fixtures: what the rules were written against."""
    texts = []
    for case in sorted(FIXTURES.glob("*/*")):
        texts += [text for _, text in load_case(case)]
    return texts


def test_the_table_answers_every_rule_as_its_triggers_do() -> None:
    rules = all_rules()
    table = TriggerTable([rule.triggers for rule in rules])
    odd = ["ｌoss = 1\n", "x = 1\n", "", "EPOCH = 3\nloss.backward()\n", "opt.step()\n"]
    for text in [*_fixture_texts(), *odd]:
        expected = [not rule.triggers or rule.triggers.found_in(text) for rule in rules]
        assert table.live(ModuleText(text)) == expected


def test_all_of_needs_a_word_of_every_group() -> None:
    training = Triggers(("training_step",), all_of=(("backward",), ("step(", ".grad")))
    assert not training.found_in("loss.backward()\n")  # an autograd function, no step
    assert training.found_in("loss.backward()\nopt.step()\n")
    assert training.found_in("loss.backward()\np.data -= lr * p.grad\n")
    assert training.found_in("def training_step(self, batch): ...\n")
    assert Triggers(all_of=(("a",),)) and not Triggers()


class _TrainingLoopProbe(Rule):
    """Publishes whether the module has a training loop."""

    id = "test-training-loop-probe"
    point = 0
    severity = Severity.LOW
    title = "test"
    items: ClassVar[tuple[str, ...]] = ()

    def finish(self, ctx: ModuleContext) -> None:
        ctx.facts["trains"] = bool(ctx.loops.training_loops)


def test_no_training_loop_without_the_training_loop_text() -> None:
    """The precondition the training rules' `TRAINING_LOOP_TEXT` gate stands on."""
    probe, checked = (_TrainingLoopProbe,), 0
    for case in sorted(FIXTURES.glob("*/*")):
        for path, text in load_case(case):
            if not TRAINING_LOOP_TEXT.found_in(text):
                result = analyse_source(path, text, probe, EngineConfig())
                assert not result.facts.get("trains"), f"{case.name}/{path}"
                checked += 1
    assert checked
