"""Rules about how code behaves in production say nothing about a pytest module.

A test's speed, its deployment and the files it reads back are not the product's. Mature
test suites build their inputs on the CPU on purpose, so every device sees the same values
(ignite's metric tests: `torch.rand(n).to(device)` a hundred times), script a model to test
scripting, and `torch.load` the checkpoint the test wrote a line earlier into its temporary
folder. Reported there, the performance (6), inference and deployment (7) and energy (8)
rules, and the checkpoint-loading ones, bury the test suite's real findings under advice
that does not apply. Correctness, science, tests and security rules still report in tests.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torchdoctor.agent.checks.base import RawFinding, Rule
from torchdoctor.agent.checks.smoke_tests import is_test_module

PRODUCTION_POINTS = frozenset({6, 7, 8})
"""Checklist points about production runs: performance, inference and deployment, energy."""
PRODUCTION_RULES = frozenset(
    {
        "torch-load-unsafe",
        "torch-load-no-map-location",
        "loss-graph-accumulation",
        "outputs-stored-with-grad",
    }
)
"""Rules of other points whose concern is a checkpoint from elsewhere (untrusted, or saved on
another device): a test loads what it wrote itself, on the machine that runs it; or memory a
long run accumulates (every step's graph kept): a test runs a few steps and keeps their
losses to compare them (torchtitan's numerics tests)."""


def production_only(rule_types: Iterable[type[Rule]]) -> frozenset[str]:
    """The ids of `rule_types` that stand down in test modules."""
    return (
        frozenset(rule.id for rule in rule_types if rule.point in PRODUCTION_POINTS)
        | PRODUCTION_RULES
    )


def outside_tests(
    findings: Sequence[RawFinding],
    production: frozenset[str],
    scripts: frozenset[str] = frozenset(),
) -> list[RawFinding]:
    """`findings` without those of `production` rules in test modules; `scripts` are the
    files named like tests that are scripts (`smoke_tests.is_test_file`), whose findings
    stay."""
    return [
        f
        for f in findings
        if f.rule not in production or f.file in scripts or not is_test_module(f.file)
    ]
