"""From a probes evidence document to findings, coverage hints and rendered data-flow maps."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from torchdoctor.agent.evidence.probe_schema import ProbeDocument
from torchdoctor.agent.evidence.probes import probe_findings
from torchdoctor.agent.models import Severity
from torchdoctor.agent.report.dataflow import render_dataflow_markdown, render_dataflow_mermaid


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


def linear_call(index: int, depth: int, dtype: str = "float32") -> dict[str, Any]:
    tensor = {"shape": [8, 4], "dtype": dtype, "device": "cuda:0"}
    return {
        "index": index,
        "module": f"Net.layer{index}" if depth else "Net",
        "type": "Linear" if depth else "Net",
        "depth": depth,
        "inputs": [tensor],
        "outputs": [tensor],
        "param_dtypes": ["float32"] if depth else [],
    }


def test_clean_run_passes_the_items_it_observed() -> None:
    analysis = probe_findings(document(), "src/train.py")
    assert analysis.findings == []
    assert analysis.coverage["2.3"].verdict == "pass"
    assert analysis.outcome == "completed-steps"
    assert "4 optimizer steps" in analysis.summary


def test_the_summary_leaves_the_outcome_to_its_readers_and_counts_one_step_as_one() -> None:
    """Held-out char-rnn.pytorch: the run read 'script-error — script-error: 1 optimizer steps
    on cpu' (the report, the notes and the LLM's tool each put the outcome before it)."""
    crashed = document(
        outcome={"kind": "script-error", "detail": "IndexError: invalid index"},
        steps_completed=1,
        loss={"steps": [0], "values": [1.0]},
    )
    analysis = probe_findings(crashed, "train.py")
    assert analysis.summary.startswith("1 optimizer step on cpu"), analysis.summary
    run = next(e for e in analysis.evidence if e.data.get("probe") == "run")
    assert run.message.startswith("script-error: 1 optimizer step on cpu")


def test_locations_are_joined_to_the_scripts_folder() -> None:
    doc = document(
        nonfinite={
            "step": 2,
            "phase": "forward",
            "module": "Net.act",
            "file": "models/net.py",
            "line": 12,
        }
    )
    finding = probe_findings(doc, "project/train.py").findings[0]
    assert (finding.rule, finding.file, finding.line) == ("probe-nan", "project/models/net.py", 12)
    assert finding.severity is Severity.CRITICAL
    assert finding.checkpoint == 2


def test_finding_without_a_location_points_at_the_scripts_first_line() -> None:
    doc = document(
        determinism={
            "ok": True,
            "seed": 1,
            "deterministic": False,
            "first_divergent_step": 0,
            "max_rel_diff": 0.04,
            "steps_compared": 3,
        }
    )
    finding = probe_findings(doc, "train.py").findings[0]
    assert (finding.rule, finding.file, finding.line) == ("probe-nondeterministic", "train.py", 1)


def test_nan_fails_both_edge_case_and_stability_items() -> None:
    doc = document(nonfinite={"step": 0, "phase": "backward", "parameter": "Net.w"})
    coverage = probe_findings(doc, "train.py").coverage
    assert coverage["2.3"].verdict == "fail" and coverage["3.3"].verdict == "fail"


def test_graph_retention_names_the_variable() -> None:
    doc = document(
        memory={
            "source": "rss",
            "retention": {
                "nodes_per_step": 7.0,
                "variable": "total",
                "file": "train.py",
                "line": 16,
            },
        }
    )
    finding = probe_findings(doc, "train.py").findings[0]
    assert (finding.rule, finding.line, finding.code) == ("probe-graph-retention", 16, "total")
    assert "`total`" in finding.message


def test_host_syncs_point_at_the_most_frequent_line() -> None:
    doc = document(
        syncs={
            "per_step": 2.0,
            "calls": [
                {"file": "train.py", "line": 30, "kind": "item", "count": 6},
                {"file": "train.py", "line": 31, "kind": "cpu", "count": 2},
            ],
        }
    )
    finding = probe_findings(doc, "train.py").findings[0]
    assert (finding.rule, finding.line, finding.items) == ("probe-host-sync", 30, ["6.1"])
    assert "This run used no GPU, where they cost little" in finding.message


@pytest.mark.parametrize(("per_forward", "found"), [(1.0, False), (3.0, True)])
def test_an_inference_run_reading_its_answer_once_per_forward_is_no_host_sync(
    per_forward: float, found: bool
) -> None:
    """Held-out pytorch-flask-api: a served model's prediction is read once per request
    (`y_hat.item()`, the answer the request returns): no device-side form exists for it."""
    doc = document(
        mode="inference",
        steps_completed=0,
        forward_passes=5,
        loss={"steps": [], "values": []},
        syncs={
            "per_step": per_forward,
            "calls": [{"file": "app.py", "line": 31, "kind": "item", "count": 4}],
        },
    )
    rules = [f.rule for f in probe_findings(doc, "app.py").findings]
    assert ("probe-host-sync" in rules) is found


def test_host_syncs_on_a_gpu_run_stall_its_queue() -> None:
    """The same reads on a run that used CUDA: each one waits for the GPU's queue."""
    calls = [{"file": "train.py", "line": 30, "kind": "item", "count": 6}]
    doc = document(
        syncs={"per_step": 2.0, "calls": calls},
        device={"cuda_available": True, "cuda_used": True, "name": "NVIDIA H100"},
    )
    finding = probe_findings(doc, "train.py").findings[0]
    assert "Each one stalls the GPU queue" in finding.message


def test_low_mfu_on_a_known_gpu_is_a_finding() -> None:
    doc = document(
        flops={
            "flops_per_step": 10**12,
            "achieved_tflops": 50.0,
            "mfu": 0.05,
            "device_name": "NVIDIA H100 80GB HBM3",
            "peak_bf16_tflops": 989.4,
        }
    )
    analysis = probe_findings(doc, "train.py")
    assert [f.rule for f in analysis.findings] == ["probe-low-mfu"]
    assert analysis.coverage["8.1"].verdict == "fail"


def test_fragmented_allocator_gets_the_expandable_segments_advice() -> None:
    gib = 2**30
    doc = document(
        vram={
            "reserved_bytes": 10 * gib,
            "allocated_bytes": 4 * gib,
            "peak_allocated_bytes": 8 * gib,
            "peak_reserved_bytes": 10 * gib,
            "inactive_split_bytes": 3 * gib,
            "num_alloc_retries": 2,
            "num_ooms": 0,
            "expandable_segments": False,
            "fragmented": True,
            "advice": "set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True",
        }
    )
    finding = probe_findings(doc, "train.py").findings[0]
    assert finding.rule == "probe-vram-fragmentation"
    assert "expandable_segments:True" in finding.message


def test_dead_parameters_and_mode_issues_keep_their_lines() -> None:
    doc = document(
        gradients={
            "never_received_grad": [{"name": "Net.unused.weight", "file": "train.py", "line": 11}]
        },
        mode_issues=[
            {
                "kind": "train-mode-at-inference",
                "module": "Net",
                "file": "train.py",
                "line": 40,
                "count": 3,
            }
        ],
    )
    found = {(f.rule, f.line) for f in probe_findings(doc, "train.py").findings}
    assert found == {("probe-dead-parameter", 11), ("probe-train-mode-at-inference", 40)}


def test_script_error_is_a_finding_at_the_raising_line() -> None:
    doc = document(
        outcome={
            "kind": "script-error",
            "detail": "ValueError: bad",
            "error_type": "ValueError",
            "file": "train.py",
            "line": 9,
            "traceback": "...",
        },
        steps_completed=0,
    )
    finding = probe_findings(doc, "train.py").findings[0]
    assert (finding.rule, finding.line, finding.severity) == (
        "probe-script-error",
        9,
        Severity.HIGH,
    )


def test_evidence_follows_the_offline_reasoner_convention() -> None:
    doc = document(
        syncs={
            "per_step": 1.0,
            "calls": [{"file": "train.py", "line": 5, "kind": "item", "count": 4}],
        }
    )
    sources = {"train.py": "\n".join(f"line {n}" for n in range(1, 11))}
    analysis = probe_findings(doc, "train.py", read_source=sources.get)
    pairs = analysis.by_point()
    finding_evidence = [ev for point, ev in pairs if "finding" in ev.data]
    assert len(finding_evidence) == 1
    ev = finding_evidence[0]
    assert ev.kind == "probe" and ev.source == "torchdoctor-probes"
    assert ev.data["verdict"] == "fail" and ev.data["items"] == ["6.1"]
    assert ev.data["finding"]["rule"] == "probe-host-sync"
    assert "    5 | line 5" in ev.excerpt
    assert {point for point, ev in pairs if ev.data.get("items") == ["2.3"]} == {2}


def test_harness_error_document_still_validates() -> None:
    analysis = probe_findings(
        {
            "schema_version": 1,
            "tool": "torchdoctor-probes",
            "script": "t.py",
            "outcome": {"kind": "harness-error"},
        },
        "t.py",
    )
    assert analysis.outcome == "harness-error" and analysis.findings == []


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(ValidationError):
        ProbeDocument.model_validate(document(surprise=1))


def test_dataflow_renderers_show_shapes_dtypes_and_devices() -> None:
    calls = [linear_call(0, 0), linear_call(1, 1), linear_call(2, 1, "bfloat16")]
    calls[1].update(parent=0, external=True)
    calls[2].update(parent=0, sources=[1])
    calls[0].update(output_sources=[2], end=2)
    doc = ProbeDocument.model_validate(document(dataflow={"step": 0, "calls": calls}))
    table = render_dataflow_markdown(doc.dataflow)
    assert table.splitlines()[0].startswith("| # | module")
    assert "[8, 4] bfloat16 cuda:0" in table
    assert len(table.splitlines()) == 5
    mermaid = render_dataflow_mermaid(doc.dataflow)
    assert mermaid.startswith("flowchart TD")
    assert "in0 -->|8x4 float32| n1" in mermaid
    assert "n1 -->|8x4 float32| n2" in mermaid
    assert "n2 -->|8x4 bfloat16| out0" in mermaid


def test_dtype_mixing_is_a_finding_for_item_1_5() -> None:
    doc = document(
        dataflow={"calls": [linear_call(0, 0)]},
        dtype_mixing=[
            {
                "module": "Net.head",
                "type": "Linear",
                "reason": "inputs ['float16'] vs parameters ['float32']",
            }
        ],
    )
    analysis = probe_findings(doc, "train.py")
    assert [f.rule for f in analysis.findings] == ["probe-dtype-mixing"]
    assert analysis.coverage["1.5"].verdict == "fail"
    assert analysis.coverage["1.3"].verdict == "pass"


def test_offline_reasoner_turns_probe_evidence_into_findings_and_verdicts() -> None:
    from torchdoctor.agent.reasoning.base import PointRequest
    from torchdoctor.agent.reasoning.offline import OfflineReasoner

    doc = document(
        syncs={
            "per_step": 1.0,
            "calls": [{"file": "train.py", "line": 5, "kind": "item", "count": 4}],
        }
    )
    analysis = probe_findings(doc, "src/train.py")
    evidence = [ev for point, ev in analysis.by_point() if point == 6]
    result = OfflineReasoner().reason(PointRequest(point=6, evidence=evidence))
    assert [(f.rule, f.file, f.line, f.checkpoint) for f in result.findings] == [
        ("probe-host-sync", "src/train.py", 5, 6)
    ]
    verdicts = {c.item: c.verdict for c in result.coverage}
    assert verdicts["6.1"] == "fail"


def test_compile_gain_is_a_finding_only_when_code_was_really_generated() -> None:
    measured = {"ok": True, "compile_s": 20.0, "speedup": 1.6, "break_even_steps": 90}
    inductor = probe_findings(document(compile={**measured, "backend": "inductor"}), "train.py")
    assert [f.rule for f in inductor.findings] == ["probe-compile-pays"]
    eager = probe_findings(document(compile={**measured, "backend": "eager"}), "train.py")
    assert eager.findings == []
    assert eager.coverage["8.2"].verdict == "pass"


def test_declared_groups_give_12_1_a_measured_verdict_or_say_what_was_missing() -> None:
    scores = [
        {"group": 0, "rows": 40, "accuracy": 0.9, "positive_rate": 0.5},
        {"group": 1, "rows": 40, "accuracy": 0.85, "positive_rate": 0.4},
    ]
    close = {"spec": "feature:3:1", "batches": 5, "groups": scores, "accuracy_gap": 0.05}
    analysis = probe_findings(document(group_metrics=close), "train.py")
    assert analysis.coverage["12.1"].verdict == "pass"
    assert "gap 0.05, within 0.1" in analysis.coverage["12.1"].reason
    assert not [f for f in analysis.findings if f.rule == "probe-group-gap"]
    unseen = {"spec": "batch:2:1", "batches": 0, "groups": []}
    analysis = probe_findings(document(group_metrics=unseen), "train.py")
    assert analysis.coverage["12.1"].verdict == "not-checked"
    assert "no evaluation output" in analysis.coverage["12.1"].reason
    assert "12.1" not in probe_findings(document(), "train.py").coverage


def test_a_cheap_run_says_which_checks_it_skipped_and_a_full_one_does_not() -> None:
    cheap = probe_findings(document(), "train.py", cheap=True)
    assert {
        item: (cheap.coverage[item].verdict, cheap.coverage[item].how) for item in ("5.1", "7.1")
    } == {
        "5.1": ("not-checked", "probe:determinism"),
        "7.1": ("not-checked", "probe:export"),
    }
    reason = cheap.coverage["5.1"].reason
    assert reason == "skipped by --probes cheap: the seeded determinism re-runs"
    assert cheap.notes == [
        "--probes cheap skipped the seeded determinism re-runs (5.1) and the export check (7.1)"
    ]
    full = probe_findings(document(), "train.py")
    assert "5.1" not in full.coverage and "7.1" not in full.coverage and full.notes == []
    # what a run measured anyway wins over the skip (first hint kept)
    measured = document(export={"torch_export": {"ok": True}})
    assert probe_findings(measured, "train.py", cheap=True).coverage["7.1"].verdict == "pass"


def test_harness_calls_of_a_cheap_audit_ask_for_no_re_runs_and_no_export() -> None:
    from torchdoctor.agent.probing import RunRequest, harness_call

    full = harness_call(RunRequest(), "train.py", [])
    assert (full.determinism_steps, full.export, full.int8) == (3, True, True)
    cheap = harness_call(RunRequest(probes="cheap"), "train.py", [])
    assert (cheap.determinism_steps, cheap.export, cheap.int8) == (0, False, True)


WORD_LM_LOSSES = [11.6, 11.4, 21.9, 11.9, 10.5, 25.5, 12.4, 12.3, 8.9, 7.9, 33.4, 12.1, 47.2, 8.2]
WORD_LM_LOSSES += [8.4, 21.0, 12.0, 15.2, 8.6, 8.8]
"""pytorch/examples' word language model's Transformer at its default learning rate of 20:
its 20 probed steps on an H100 (read off the report's loss chart), swinging from 8 to 47."""


def test_a_loss_that_swings_far_above_its_recent_median_is_reported_as_spikes() -> None:
    steps = list(range(len(WORD_LM_LOSSES)))
    analysis = probe_findings(
        document(steps_completed=len(steps), loss={"steps": steps, "values": WORD_LM_LOSSES}),
        "src/train.py",
    )
    [spike] = [f for f in analysis.findings if f.rule == "probe-loss-spikes"]
    assert "jumps to 47.2 at step 12, 3.9x the median" in spike.message
    assert "such jump(s) in 20 steps" in spike.message


@pytest.mark.parametrize(
    "values",
    [
        [2.3 - 0.1 * i for i in range(14)],  # learning
        [1.0, 1.4, 0.8, 1.3, 0.7, 1.5, 0.9, 1.2, 0.6, 1.6, 0.8, 1.1, 0.7, 1.4],  # minibatch noise
        [-1.0, -2.0, -3.0, -1.0, -2.0, -9.0, -1.0, -2.0, -3.0, -1.0, -20.0, -1.0],  # no scale
        [5.0, 1.0, 0.5, 0.2, 0.1, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05],  # fast start
    ],
)
def test_ordinary_loss_curves_have_no_spikes(values: list[float]) -> None:
    steps = list(range(len(values)))
    analysis = probe_findings(
        document(steps_completed=len(steps), loss={"steps": steps, "values": values}),
        "src/train.py",
    )
    assert "probe-loss-spikes" not in {f.rule for f in analysis.findings}


def test_a_failed_export_names_its_error_type_once() -> None:
    # the harness writes `format_exception_only`'s text, which starts with the type (a
    # seq2seq tutorial whose forward reads `.data.numpy()`); an error text without it gets it
    text = "RuntimeError: .numpy() is not supported for tensor subclasses.\n"
    for error, shown in ((text, text.strip()), ("no graph\n", "RuntimeError: no graph")):
        doc = document(
            export={"torch_export": {"ok": False, "error_type": "RuntimeError", "error": error}}
        )
        (finding,) = [f for f in probe_findings(doc, "train.py").findings]
        assert finding.message == f"torch.export.export failed on the captured input: {shown}"


def test_an_export_not_tried_is_not_checked_rather_than_failed() -> None:
    # elliotwaite/pytorch-to-javascript-with-onnx-js's convert_to_onnx.py: the script's own
    # torch.onnx.export traces the model, so the probes capture no input to try torch.export
    # with; the script exported fine, and "the model cannot be exported" was false
    reason = {"ok": False, "error": "no model with a captured input", "tried": False}
    analysis = probe_findings(document(export={"torch_export": reason}), "convert_to_onnx.py")
    assert "probe-export-failed" not in {f.rule for f in analysis.findings}
    hint = analysis.coverage["7.1"]
    assert hint.verdict == "not-checked" and "no model with a captured input" in hint.reason
