"""softmax-without-dim on inputs that are 1-D by construction: low severity, the rest medium."""

from __future__ import annotations

from pathlib import Path

from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.models import Severity

CASE = (
    Path(__file__).parents[1]
    / "fixtures"
    / "rules"
    / "softmax-without-dim"
    / "positive_one_dimensional_scores.py"
)


def test_one_dimensional_inputs_are_low_and_the_near_misses_medium() -> None:
    text = CASE.read_text()
    result = analyse_files(
        [(CASE.name, text)], EngineConfig(select=frozenset({"softmax-without-dim"}))
    )
    lines = text.splitlines()
    by_function = {}
    for finding in result.all_findings():
        function = next(
            line.split("(")[0].removeprefix("def ")
            for line in reversed(lines[: finding.line])
            if line.startswith("def ")
        )
        by_function[function] = finding.severity
    assert by_function == {
        "attention_weights": Severity.LOW,
        "position_prior": Severity.LOW,
        "sampled": Severity.LOW,
        "grid": Severity.MEDIUM,
        "reshaped": Severity.MEDIUM,
        "from_shape": Severity.MEDIUM,
    }
