"""Severity from context (issue 13, item 7): a rule's severity follows what the code shows, and
every rule whose severity varies says when (`severity_note`, shown by `torchdoctor rules ID`)."""

from __future__ import annotations

import ast
import inspect
import textwrap

from torchdoctor.agent.checks.base import EngineConfig, RawFinding
from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.checks.registry import all_rules
from torchdoctor.agent.models import Severity

EVAL = """\
{header}
import torch

def evaluate(model, loader):
    with torch.no_grad():
        return sum(model(x).sum() for x in loader)

model = {model}
evaluate(model, [torch.zeros(2, 4)])
"""


def _eval_findings(header: str, model: str) -> list[RawFinding]:
    source = EVAL.format(header=header, model=model)
    config = EngineConfig(select=frozenset({"eval-without-eval-mode"}))
    found = analyse_files([("train.py", source)], config, workers=1).all_findings()
    return [f for f in found if f.rule == "eval-without-eval-mode"]


def test_missing_eval_is_high_with_dropout_or_batch_norm() -> None:
    for model in (
        "torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.1))",
        "torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))",
    ):
        found = _eval_findings("", model)
        assert [f.severity for f in found] == [Severity.HIGH], model


def test_missing_eval_is_medium_when_the_layers_cannot_be_seen() -> None:
    found = _eval_findings("from mylib.models import Net", "Net()")
    assert [f.severity for f in found] == [Severity.MEDIUM]
    assert "any dropout or BatchNorm" in found[0].message


def test_missing_eval_is_not_reported_for_a_model_without_mode_dependent_layers() -> None:
    assert _eval_findings("", "torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())") == []


def _varies_severity(rule: type) -> bool:
    """Whether the rule reports with a computed severity (not its class default)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(inspect.getmodule(rule))))  # type: ignore[arg-type]
    for node in ast.walk(tree):
        for kw in getattr(node, "keywords", []):
            if kw.arg == "severity" and not (
                isinstance(kw.value, ast.Attribute) and kw.value.attr == "severity"
            ):
                return True
    return False


def test_every_rule_whose_severity_varies_documents_when() -> None:
    varying = [rule for rule in all_rules() if _varies_severity(rule)]
    assert len(varying) >= 6
    undocumented = [rule.id for rule in varying if not rule.severity_note]
    assert undocumented == []
