"""Reading the probes' evidence document, and splitting a run command."""

from __future__ import annotations

import math

import pytest

from torchdoctor.agent.evidence.probe_schema import ProbeDocument
from torchdoctor.agent.fixes.smoke import smoke_run_from_evidence


def document(**overrides: object) -> ProbeDocument:
    base: dict[str, object] = {
        "tool": "torchdoctor-probes",
        "script": "train.py",
        "outcome": {"kind": "completed-steps", "detail": "stopped after 12 optimizer steps"},
        "loss": {"steps": [0, 1, 2], "values": [2.0, None, 1.0]},
        "timing": {"step_ms": [900.0] + [10.0 + i for i in range(11)]},
        "memory": {
            "graph_scans": [{"step": s, "tensors": 1, "nodes": 5} for s in range(9)],
            "retention": {"nodes_per_step": 12.0, "variable": "total"},
        },
        "mode_issues": [
            {"kind": "train-mode-at-inference", "module": "Net", "count": 3},
            {"kind": "eval-with-grad", "module": "Net", "count": 2},
        ],
        "gradients": {"steps": [0, 1], "global_norm": [1.0, 2.0]},
    }
    base.update(overrides)
    return ProbeDocument.model_validate(base)


def test_losses_steady_times_and_symptoms_are_read() -> None:
    run = smoke_run_from_evidence(document())
    assert run.ok
    assert run.losses[0] == 2.0 and math.isnan(run.losses[1])
    # the first step and the steps the memory probe spent scanning graphs are left out
    assert run.step_times_s == pytest.approx([0.018, 0.019, 0.020])
    assert run.signals.graph_retention is not None
    assert run.signals.graph_retention.nodes_per_step == 12.0
    assert run.signals.train_mode_forwards_without_grad == 3
    assert run.signals.grad_norms == [1.0, 2.0]


def test_a_script_error_is_a_failed_run_with_its_location() -> None:
    crashed = document(
        outcome={
            "kind": "script-error",
            "detail": "boom",
            "error_type": "RuntimeError",
            "file": "train.py",
            "line": 7,
        }
    )
    run = smoke_run_from_evidence(crashed)
    assert not run.ok and "RuntimeError at train.py:7" in run.detail


def test_an_inference_run_is_described_by_its_forward_passes() -> None:
    """Held-out pytorch-flask-api: a verified fix of the serving code read 'smoke-run: ok — 0
    of 5 steps recorded (completed-steps: stopped after 5 forward passes)'."""
    from torchdoctor.agent.fixes.verify import _describe_run

    served = document(
        mode="inference",
        forward_passes=5,
        loss={"steps": [], "values": []},
        outcome={"kind": "completed-steps", "detail": "stopped after 5 forward passes"},
    )
    described = _describe_run(smoke_run_from_evidence(served), 5)
    assert described.startswith("5 of 5 forward passes recorded"), described
    assert _describe_run(smoke_run_from_evidence(document()), 5).startswith("3 of 5 steps recorded")
