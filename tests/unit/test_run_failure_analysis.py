"""Run-derived findings never come from a failed run or from missing values (issue 13, item 2),
and the probe rules the analysis emits are the ones the rule catalogue lists."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from torchdoctor.agent.checks.catalogue import catalogue
from torchdoctor.agent.evidence import distributed, probes
from torchdoctor.agent.evidence.probes import probe_findings

TRACEBACK = 'Traceback (most recent call last):\n  File "train.py", line 5\nOSError: no data'


def document(**sections: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "schema_version": 1,
        "tool": "torchdoctor-probes",
        "script": "train.py",
        "outcome": {"kind": "completed-steps", "detail": "stopped after 4 optimizer steps"},
        "mode": "train",
        "steps_completed": 4,
        "loss": {"steps": [0, 1, 2, 3], "values": [1.0, 0.9, 0.8, 0.7]},
    }
    base.update(sections)
    return base


# what the determinism and export probes wrote for a script that never reached a step
EMPTY_DETERMINISM = {
    "ok": True,
    "seed": 0,
    "steps_compared": 0,
    "deterministic": False,
    "first_divergent_step": None,
    "max_rel_diff": 0.0,
}
EMPTY_EXPORT = {"torch_export": {"ok": False}}
FAILED = {
    "kind": "script-error",
    "detail": "OSError: no data",
    "error_type": "OSError",
    "traceback": TRACEBACK,
    "file": "train.py",
    "line": 5,
}


@pytest.mark.parametrize("steps", [0, 3])
def test_failed_run_reads_no_measurement(steps: int) -> None:
    doc = document(
        outcome=FAILED,
        steps_completed=steps,
        determinism=EMPTY_DETERMINISM,
        export=EMPTY_EXPORT,
        mode_issues=[
            {"kind": "eval-with-grad", "module": "Net", "count": 2, "file": "train.py", "line": 3}
        ],
    )
    analysis = probe_findings(doc, "train.py")
    assert [f.rule for f in analysis.findings] == ["probe-script-error"]
    assert "OSError" in analysis.evidence[0].excerpt
    assert not [h for h in analysis.coverage.values() if h.verdict == "pass"]


def test_non_zero_sys_exit_is_a_failure_and_zero_is_not() -> None:
    failed = probe_findings(
        document(outcome={"kind": "sys-exit", "exit_code": 2}, steps_completed=0), "train.py"
    )
    assert [f.rule for f in failed.findings] == ["probe-script-error"]
    assert "exit code 2" in failed.findings[0].message
    clean = probe_findings(document(outcome={"kind": "sys-exit", "exit_code": 0}), "train.py")
    assert clean.findings == []


def test_missing_values_in_a_finished_run_are_not_checked_never_findings() -> None:
    analysis = probe_findings(
        document(determinism=EMPTY_DETERMINISM, export=EMPTY_EXPORT), "train.py"
    )
    assert analysis.findings == []
    assert analysis.coverage["5.1"].verdict == "not-checked"
    assert analysis.coverage["7.1"].verdict == "not-checked"
    assert not any("None" in ev.message for ev in analysis.evidence)


def _emitted_probe_rules() -> dict[str, tuple[int, str, str]]:
    """Rule, point, severity and title of every `find(...)` in the modules that emit probe
    findings (a severity chosen by context counts by its first branch, the catalogue's)."""
    found: dict[str, tuple[int, str, str]] = {}
    for module in (probes, distributed):
        found |= _finds(ast.parse(Path(module.__file__).read_text(encoding="utf-8")))
    return found


def _finds(tree: ast.Module) -> dict[str, tuple[int, str, str]]:
    found: dict[str, tuple[int, str, str]] = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "find"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            point, severity, title = node.args[1], node.args[2], node.args[3]
            if isinstance(severity, ast.IfExp):
                severity = severity.body
            assert isinstance(point, ast.Constant) and isinstance(title, ast.Constant)
            assert isinstance(severity, ast.Attribute)
            found[node.args[0].value] = (point.value, severity.attr.lower(), title.value)
    return found


def test_every_probe_rule_emitted_is_in_the_catalogue_with_the_same_facts() -> None:
    emitted = _emitted_probe_rules()
    listed = {r.id: r for r in catalogue().values() if r.kind == "probe"}
    assert set(emitted) == set(listed)
    for rule_id, (point, severity, title) in emitted.items():
        entry = listed[rule_id]
        assert (entry.point, entry.severity, entry.title) == (point, severity, title), rule_id


def test_a_run_stopped_in_an_evaluation_before_its_first_step_says_how_far_it_got() -> None:
    """nanoGPT's lecture script runs 400 evaluation forwards before its first optimizer step:
    stopped at the budget there, the run made progress, only no step."""
    budget = {"kind": "time-budget", "detail": "stopped at the 280 s wall-clock budget"}
    stuck = probe_findings(document(outcome=budget, steps_completed=0, loss={}), "train.py")
    in_evaluation = probe_findings(
        document(outcome=budget, steps_completed=0, loss={}, root_forwards=400), "train.py"
    )

    (hang,) = [f for f in stuck.findings if f.rule == "probe-hang"]
    assert hang.message.endswith("0 optimizer steps completed.")
    (late,) = [f for f in in_evaluation.findings if f.rule == "probe-hang"]
    assert "0 optimizer steps completed, after 400 forward passes of the model" in late.message


def test_a_run_stopped_in_an_evaluation_after_its_first_step_says_it_completed_one() -> None:
    """minGPT's adder evaluates its whole dataset after its first step (161 forwards in all):
    stopped at the budget there, the finding says one step completed, not none."""
    budget = {"kind": "time-budget", "detail": "stopped at the 280 s wall-clock budget"}
    stopped = probe_findings(
        document(outcome=budget, steps_completed=1, loss={}, root_forwards=161), "adder.py"
    )
    (hang,) = [f for f in stopped.findings if f.rule == "probe-hang"]
    assert hang.title == "The script got no further than its first step in its time budget"
    assert "1 optimizer step completed, then 160 more forward passes of the model" in hang.message
    assert "an evaluation after the first step" in hang.message
