"""The probes harness as a real subprocess on small scripts that each show one symptom.

Each test runs `python -m torchdoctor.sandbox.probes` on a fixture from tests/fixtures/probes/,
checks
the evidence document against its typed mirror, and asserts the right probe caught it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from torchdoctor.agent.evidence.probe_schema import ProbeDocument
from torchdoctor.agent.evidence.probes import probe_findings
from torchdoctor.agent.fixes.smoke import worker_epochs

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "probes"


def run_probes(
    tmp_path: Path,
    script: str | Path,
    *options: str,
    env_extra: dict[str, str] | None = None,
    timeout: float = 120,
) -> tuple[ProbeDocument, subprocess.CompletedProcess[str]]:
    out = tmp_path / "evidence.json"
    path = script if isinstance(script, Path) else FIXTURES / script
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torchdoctor.sandbox.probes",
            str(path),
            "--out",
            str(out),
            *options,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert out.exists(), done.stderr[-3000:]
    raw: dict[str, Any] = json.loads(out.read_text())
    document = ProbeDocument.model_validate(raw)
    assert document.probe_errors == [], document.probe_errors
    return document, done


def rules(document: ProbeDocument, script: str) -> set[str]:
    return {f.rule for f in probe_findings(document, f"src/{script}").findings}


def test_healthy_loop_completes_its_steps_with_no_findings(tmp_path: Path) -> None:
    doc, done = run_probes(
        tmp_path,
        "train_ok.py",
        "--steps",
        "4",
        "--determinism",
        "3",
        "--export",
        "--int8",
        "--probe",
        "compile",
        "--compile-backend",
        "eager",
    )
    assert done.returncode == 0
    assert doc.outcome.kind == "completed-steps"
    assert doc.steps_completed == 4 and doc.mode == "train"
    assert len(doc.loss.values) == 4 and all(v is not None for v in doc.loss.values)
    assert len(doc.gradients.global_norm) == 4
    assert doc.dataflow.calls[0].type == "Sequential"
    (signature,) = doc.root_signatures  # one batch size all run long
    assert signature.type == "Sequential" and signature.calls >= 4
    assert [t.shape for t in [*signature.inputs, *signature.outputs]] == [[16, 8], [16, 2]]
    assert doc.flops is not None and doc.flops.flops_per_step and doc.flops.flops_per_step > 0
    assert doc.memory.retention is None
    relu = next(a for a in doc.activations if a.type == "ReLU")
    assert relu.dead_fraction is not None and 0 <= relu.dead_fraction < 0.7
    assert len({scan.nodes for scan in doc.memory.graph_scans if scan.step >= 1}) == 1
    # seeded twice in fresh processes: the same losses, bit for bit
    assert doc.determinism is not None and doc.determinism.deterministic
    assert doc.determinism.bitwise_equal
    # a plain MLP exports and quantizes
    assert doc.export is not None and doc.export.torch_export is not None
    assert doc.export.torch_export.ok
    assert doc.int8 is not None and doc.int8.ok
    assert (doc.int8.model_extra or {})["linear_layers"] == 2
    # torch.compile cost and gain measured on the captured model and input
    assert doc.compile is not None and doc.compile.ok, doc.compile
    compiled = doc.compile.model_extra or {}
    assert compiled["backend"] == "eager" and compiled["compiled_step_ms"] > 0
    assert rules(doc, "train_ok.py") == set()


def test_every_shape_the_root_model_saw_is_recorded_beside_the_one_step_map(
    tmp_path: Path,
) -> None:
    doc, _done = run_probes(tmp_path, "variable_length.py", "--steps", "3", "--no-flops")
    assert len(doc.dataflow.calls[0].inputs) == 1  # the map: the first step only
    seen = [(s.inputs[0].shape, s.outputs[0].shape, s.calls) for s in doc.root_signatures]
    assert seen == [([8, 5, 4], [8, 5, 2], 1), ([8, 9, 4], [8, 9, 2], 1), ([3, 7, 4], [3, 7, 2], 1)]


def test_nan_is_traced_to_the_module_and_step_where_it_starts(tmp_path: Path) -> None:
    doc, _ = run_probes(tmp_path, "nan_at_step3.py", "--steps", "5")
    assert doc.nonfinite is not None
    assert (doc.nonfinite.step, doc.nonfinite.phase) == (2, "forward")
    assert doc.nonfinite.module == "Sequential.1"
    assert (doc.nonfinite.file, doc.nonfinite.line) == ("nan_at_step3.py", 12)
    assert "probe-nan" in rules(doc, "nan_at_step3.py")


def test_loss_accumulated_as_a_tensor_is_reported_as_graph_retention(tmp_path: Path) -> None:
    doc, _ = run_probes(tmp_path, "leak_total_loss.py", "--steps", "6")
    retention = doc.memory.retention
    assert retention is not None and retention.nodes_per_step > 0
    assert (retention.variable, retention.file, retention.line) == (
        "total",
        "leak_total_loss.py",
        16,
    )
    assert "probe-graph-retention" in rules(doc, "leak_total_loss.py")


def test_item_in_every_step_is_counted_at_its_line(tmp_path: Path) -> None:
    doc, _ = run_probes(tmp_path, "item_per_step.py", "--steps", "6")
    assert doc.syncs.per_step == pytest.approx(1.0)
    assert (doc.syncs.calls[0].file, doc.syncs.calls[0].line, doc.syncs.calls[0].kind) == (
        "item_per_step.py",
        16,
        "item",
    )
    assert "probe-host-sync" in rules(doc, "item_per_step.py")


def test_reads_of_a_periodic_evaluation_are_not_a_sync_on_every_step(tmp_path: Path) -> None:
    doc, _ = run_probes(tmp_path, "periodic_eval_reads.py", "--steps", "6")
    assert doc.syncs.per_step == 0.0
    assert doc.syncs.calls and doc.syncs.calls[0].file == "periodic_eval_reads.py"
    assert "probe-host-sync" not in rules(doc, "periodic_eval_reads.py")


def test_unused_layer_is_a_dead_parameter_located_at_its_assignment(tmp_path: Path) -> None:
    doc, _ = run_probes(tmp_path, "dead_parameter.py", "--steps", "3")
    dead = {(p.name, p.file, p.line) for p in doc.gradients.never_received_grad}
    assert dead == {
        ("Net.unused.weight", "dead_parameter.py", 11),
        ("Net.unused.bias", "dead_parameter.py", 11),
    }
    analysis = probe_findings(doc, "src/dead_parameter.py")
    assert {(f.rule, f.file, f.line) for f in analysis.findings} == {
        ("probe-dead-parameter", "src/dead_parameter.py", 11)
    }
    assert analysis.coverage["4.3"].verdict == "fail"


def test_parameter_with_gradient_outside_the_optimizer(tmp_path: Path) -> None:
    doc, _ = run_probes(tmp_path, "grad_not_in_optimizer.py", "--steps", "3")
    assert {p.name for p in doc.gradients.grad_not_in_optimizer} == {
        "Net.head.weight",
        "Net.head.bias",
    }
    assert "probe-grad-not-in-optimizer" in rules(doc, "grad_not_in_optimizer.py")


def test_clock_seeded_noise_makes_seeded_runs_diverge(tmp_path: Path) -> None:
    doc, _ = run_probes(tmp_path, "nondeterministic.py", "--steps", "1", "--determinism", "3")
    assert doc.determinism is not None and doc.determinism.ok
    assert doc.determinism.deterministic is False
    assert "probe-nondeterministic" in rules(doc, "nondeterministic.py")
    assert doc.determinism.cause is None  # the clock, not the hash seed: a third run differs


def test_a_vocabulary_in_hash_order_is_named_as_what_escapes_the_seed(tmp_path: Path) -> None:
    doc, _ = run_probes(
        tmp_path, "hash_ordered_vocabulary.py", "--steps", "1", "--determinism", "3"
    )
    assert doc.determinism is not None and doc.determinism.deterministic is False
    assert doc.determinism.cause == "hash-order"
    [finding] = [
        f
        for f in probe_findings(doc, "src/hash_ordered_vocabulary.py").findings
        if f.rule == "probe-nondeterministic"
    ]
    assert "PYTHONHASHSEED" in finding.message and "sorted(set(" in finding.message


def test_inference_in_training_mode_is_flagged_at_the_call(tmp_path: Path) -> None:
    doc, _ = run_probes(tmp_path, "train_mode_inference.py", "--steps", "50")
    assert doc.mode == "inference" and doc.outcome.kind == "no-optimizer"
    assert doc.forward_passes == 10
    assert [(i.kind, i.file, i.line) for i in doc.mode_issues] == [
        ("train-mode-at-inference", "train_mode_inference.py", 10)
    ]
    assert "probe-train-mode-at-inference" in rules(doc, "train_mode_inference.py")


def test_eval_forward_with_autograd_is_flagged(tmp_path: Path) -> None:
    doc, _ = run_probes(tmp_path, "eval_with_grad.py", "--steps", "3")
    assert [(i.kind, i.line) for i in doc.mode_issues] == [("eval-with-grad", 12)]


def test_data_dependent_forward_fails_export_and_is_reported(tmp_path: Path) -> None:
    doc, _ = run_probes(tmp_path, "unexportable.py", "--steps", "1", "--export")
    assert doc.export is not None and doc.export.torch_export is not None
    assert doc.export.torch_export.ok is False
    assert doc.export.onnx is not None
    analysis = probe_findings(doc, "unexportable.py")
    failed = [f for f in analysis.findings if f.rule == "probe-export-failed"]
    assert failed and (failed[0].file, failed[0].line) == ("unexportable.py", 13)


def test_crashing_script_yields_script_error_with_its_line(tmp_path: Path) -> None:
    doc, _ = run_probes(tmp_path, "crash.py", "--steps", "5")
    assert doc.outcome.kind == "script-error"
    assert doc.outcome.error_type == "RuntimeError"
    assert (doc.outcome.file, doc.outcome.line) == ("crash.py", 14)
    assert doc.outcome.traceback and "crash.py" in doc.outcome.traceback
    assert doc.steps_completed == 1


def test_hanging_script_is_stopped_by_its_time_budget(tmp_path: Path) -> None:
    doc, _done = run_probes(tmp_path, "hang.py", "--steps", "5", "--time-budget", "4", timeout=90)
    assert doc.outcome.kind == "time-budget"
    assert doc.steps_completed <= 1
    assert doc.timing.wall_s < 30


def test_script_stuck_in_c_code_is_ended_by_the_watchdog(tmp_path: Path) -> None:
    script = tmp_path / "stuck.py"
    script.write_text(
        textwrap.dedent("""
        import signal
        import time
        import torch
        signal.signal(signal.SIGALRM, signal.SIG_IGN)  # the script disarms the alarm
        model = torch.nn.Linear(2, 1)
        model(torch.zeros(1, 2))
        time.sleep(3600)
    """)
    )
    doc, _done = run_probes(
        tmp_path, script, "--steps", "5", "--time-budget", "1", "--grace", "1", timeout=60
    )
    assert doc.outcome.kind == "time-budget"
    assert doc.forward_passes == 1


def test_a_run_stopped_in_an_evaluation_before_its_first_step_counts_its_forwards(
    tmp_path: Path,
) -> None:
    """nanoGPT's lecture script estimates its loss over hundreds of forwards before its first
    optimizer step: stopped there, the run still shows how far it got."""
    script = tmp_path / "evaluate_first.py"
    script.write_text(
        textwrap.dedent("""
        import time
        import torch
        model = torch.nn.Linear(4, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        with torch.no_grad():
            for _ in range(100_000):  # estimate_loss() before training
                model(torch.zeros(2, 4))
                time.sleep(0.01)
    """)
    )
    # a budget that leaves the loop seconds even when importing torch is slow (a loaded box)
    doc, _done = run_probes(tmp_path, script, "--steps", "5", "--time-budget", "8", timeout=120)
    assert (doc.outcome.kind, doc.steps_completed, doc.forward_passes) == ("time-budget", 0, 0)
    assert doc.root_forwards > 10


def test_sys_exit_is_recorded_with_its_code(tmp_path: Path) -> None:
    doc, _ = run_probes(tmp_path, "sys_exit.py", "--steps", "5")
    assert (doc.outcome.kind, doc.outcome.exit_code) == ("sys-exit", 3)
    assert doc.steps_completed == 2


def test_dataloader_workers_are_measured_and_all_exit(tmp_path: Path) -> None:
    """36 steps of 32 batches an epoch: the second epoch's iterator (its workers started
    again, what `persistent_workers` saves) is counted."""
    doc, done = run_probes(tmp_path, "dataloader_workers.py", "--steps", "36")
    assert doc.outcome.kind == "completed-steps"
    loader = doc.dataloader.loaders[0]
    assert (loader.num_workers, loader.batch_size, loader.file, loader.line) == (
        2,
        16,
        "dataloader_workers.py",
        28,
    )
    assert loader.batches >= 36
    assert worker_epochs(doc.dataloader.loaders) == [(2, 32)]
    assert doc.dataloader.wait_share is not None
    assert doc.worker_processes_left == 0
    assert done.returncode == 0


def test_inference_script_stops_after_n_forwards(tmp_path: Path) -> None:
    doc, _ = run_probes(tmp_path, "no_optimizer.py", "--steps", "3")
    assert (doc.outcome.kind, doc.mode, doc.forward_passes) == ("completed-steps", "inference", 3)
    assert doc.mode_issues == []


@pytest.mark.parametrize("script", ["updated_by_hand.py", "updated_by_hand_compiled.py"])
def test_a_loop_that_updates_its_parameters_by_hand_is_training(
    tmp_path: Path, script: str
) -> None:
    """pytorch/examples' word language model steps with `p.data.add_(p.grad, alpha=-lr)`: its
    run was read as inference (forward passes), and a fix's run to the end stopped as "no
    optimizer was built". Each backward after the first update is a training step, compiled
    model or not (its compile fix's run on an H100 was 20 forward passes whose losses were
    compared with the original's steps)."""
    doc, _ = run_probes(tmp_path, script, "--steps", "5")
    assert (doc.outcome.kind, doc.mode, doc.steps_completed) == ("completed-steps", "train", 5)
    assert doc.updated_by_hand and doc.outcome.detail == "stopped after 5 training steps"
    assert len(doc.loss.values) == 5 and len(doc.gradients.global_norm) == 5
    assert doc.gradients.optimizers == 0 and doc.gradients.never_received_grad == []
    summary = probe_findings(doc, f"src/{script}").summary
    assert "5 training steps (no optimizer: one a backward pass)" in summary


def test_an_evaluation_before_training_longer_than_the_step_limit_is_waited_through(
    tmp_path: Path,
) -> None:
    doc, _ = run_probes(tmp_path, "evaluate_then_train.py", "--steps", "5")
    assert (doc.outcome.kind, doc.mode, doc.steps_completed) == ("completed-steps", "train", 5)
    assert doc.root_forwards == 35 and doc.outcome.detail == "stopped after 5 optimizer steps"
    assert len(doc.loss.values) == 5 and len(doc.timing.step_ms) == 5  # the evaluation's dropped


def test_backward_passes_that_never_move_the_parameters_are_no_training(tmp_path: Path) -> None:
    """Its code says `backward(`, so its forwards past the limit are waited through for a
    training that never comes: it ends as an inference script."""
    doc, _ = run_probes(tmp_path, "saliency.py", "--steps", "5")
    assert (doc.outcome.kind, doc.mode, doc.forward_passes) == ("no-optimizer", "inference", 100)
    assert not doc.updated_by_hand


def test_data_made_by_a_module_without_parameters_is_no_inference_step(tmp_path: Path) -> None:
    """torchdiffeq's demo integrates its parameter-free true dynamics 200 times before it builds
    its optimizer: those calls were 20 inference steps that ended the run before training; the
    float64 model's statistics stopped the forward probe."""
    doc, _ = run_probes(tmp_path, "stateless_data_dynamics.py", "--steps", "5")
    assert (doc.outcome.kind, doc.mode, doc.steps_completed) == ("completed-steps", "train", 5)
    assert {call.type for call in doc.dataflow.calls if call.depth == 0} == {"ODEFunc"}
    assert {a.type for a in doc.activations} >= {"ODEFunc", "Linear"}  # float64 outputs read


def test_a_whole_model_saved_or_copied_mid_run_does_not_carry_the_probes(tmp_path: Path) -> None:
    """A char-RNN trainer saves its whole module (`torch.save(model, path)`): the probes' own
    hooks on the root, bound to the session, were pickled with it and the save raised
    "Can't pickle local object 'Session._guard.<locals>.guarded'", a failure of torchdoctor
    reported as the script's; a deep copy of the model copied the whole session."""
    doc, _ = run_probes(tmp_path, "save_whole_model.py", "--steps", "6")
    assert (doc.outcome.kind, doc.steps_completed) == ("completed-steps", 6), doc.outcome


def test_script_without_a_model_reports_no_model(tmp_path: Path) -> None:
    doc, _ = run_probes(tmp_path, "no_model.py", "--steps", "3")
    assert doc.outcome.kind == "no-model"
    assert doc.model is None


def test_torchvision_download_gets_a_synthetic_stand_in(tmp_path: Path) -> None:
    doc, _ = run_probes(tmp_path, "torchvision_download.py", "--steps", "2")
    assert doc.outcome.kind == "completed-steps"
    assert [(d.dataset, d.shape, d.classes) for d in doc.synthetic_datasets] == [
        ("MNIST", [1, 28, 28], 10)
    ]
    assert doc.model is not None
    assert [t.shape for t in doc.model.captured_input] == [[32, 1, 28, 28]]
    assert not (tmp_path / "data").exists()
    analysis = probe_findings(doc, "torchvision_download.py")
    assert any("synthetic stand-in for MNIST" in note for note in analysis.notes)


def test_installed_torchvision_without_files_falls_back_to_the_stand_in(tmp_path: Path) -> None:
    fake = tmp_path / "site" / "torchvision"
    (fake / "datasets").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "datasets" / "__init__.py").write_text(
        textwrap.dedent("""
        class CIFAR10:
            def __init__(self, root, train=True, transform=None, download=False):
                raise RuntimeError("Dataset not found or corrupted.")
    """)
    )
    script = tmp_path / "cifar.py"
    script.write_text(
        textwrap.dedent("""
        import torch
        from torchvision import datasets
        data = datasets.CIFAR10("./data", train=False, download=True)
        image, label = data[0]
        model = torch.nn.Linear(3, 1)
        model(torch.zeros(1, 3))
    """)
    )
    doc, _ = run_probes(
        tmp_path,
        script,
        "--steps",
        "1",
        env_extra={"PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path / 'site'}"},
    )
    assert doc.outcome.kind == "completed-steps"
    assert [(d.dataset, d.train, d.length) for d in doc.synthetic_datasets] == [
        ("CIFAR10", False, 10000)
    ]
    assert "files absent" in doc.synthetic_datasets[0].reason


def test_script_arguments_after_double_dash_reach_the_script(tmp_path: Path) -> None:
    script = tmp_path / "args.py"
    script.write_text(
        "import sys\nimport torch\nif sys.argv[1:] != ['--steps', '7']:\n"
        "    raise SystemExit(2)\ntorch.nn.Linear(1, 1)(torch.zeros(1, 1))\n"
    )
    doc, _ = run_probes(tmp_path, script, "--steps", "1", "--", "--steps", "7")
    assert doc.argv == ["--steps", "7"]
    assert doc.outcome.kind == "completed-steps"


def test_value_ranges_at_the_data_boundaries_come_from_sampled_steps_only(
    tmp_path: Path,
) -> None:
    doc, _ = run_probes(
        tmp_path, "image_batches.py", "--steps", "8", "--sample-every", "2", "--no-flops"
    )
    batch = next(b for b in doc.value_ranges if b.boundary == "batch")
    assert (batch.name, batch.file, batch.line) == ("TensorDataset", "image_batches.py", 12)
    pixels, labels = batch.tensors
    assert (pixels.dtype, pixels.shape, pixels.samples) == ("float32", [8, 1, 6, 6], 4)
    assert pixels.finite and not pixels.integral
    assert pixels.min is not None and pixels.max is not None
    assert 0 <= pixels.min < 0.1 and 0.9 < pixels.max <= 1  # step 5's 7.0 was not sampled
    assert (labels.dtype, labels.integral, labels.samples) == ("int64", True, 4)
    assert labels.min is not None and labels.max is not None
    assert labels.min >= 0 and labels.max <= 9
    (inputs,) = [b for b in doc.value_ranges if b.boundary == "model-input"]
    assert inputs.name == "Sequential" and [t.index for t in inputs.tensors] == [0]
    assert inputs.tensors[0].max == pixels.max


def test_what_the_projects_own_getitem_and_collate_return_is_recorded(tmp_path: Path) -> None:
    doc, _ = run_probes(tmp_path, "padded_items.py", "--steps", "6", "--no-flops")
    items = [f for f in doc.data_functions if f.role == "getitem"]
    assert {(f.name, f.file, f.line, f.container) for f in items} == {
        ("Sentences.__getitem__", "padded_items.py", 13, "tuple")
    }
    assert sorted(f.elements[0].shape or [] for f in items) == [[3], [4], [5], [6]]
    assert all(f.elements[0].dtype == "int64" and f.elements[1].kind == "int" for f in items)
    batches = [f for f in doc.data_functions if f.role == "collate"]
    assert {(f.name, f.line) for f in batches} == {("pad", 17)}
    assert sorted(f.elements[0].shape or [] for f in batches) == [[1, 3], [1, 4], [1, 5], [1, 6]]


def test_per_group_accuracy_of_the_scripts_evaluation_outputs_for_a_declared_column(
    tmp_path: Path,
) -> None:
    doc, _ = run_probes(tmp_path, "group_gap.py", "--steps", "2", "--groups", "batch:2:1")
    metrics = doc.group_metrics
    assert metrics is not None and metrics.spec == "batch:2:1"
    # one evaluation (4 batches) after the first step; the run stops at the end of the second
    assert [(g.group, g.rows, g.accuracy) for g in metrics.groups] == [(0, 32, 1.0), (1, 32, 0.0)]
    assert metrics.accuracy_gap == 1.0 and metrics.batches == 4
    analysis = probe_findings(doc, "group_gap.py")
    (gap,) = [f for f in analysis.findings if f.rule == "probe-group-gap"]
    assert "group 1: accuracy 0.00 over 32 rows" in gap.message


COMPILED_LOSS = """
import torch
import torch.nn.functional as F

torch.manual_seed(0)
model = torch.nn.Linear(8, 4)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
cross_entropy = torch.compile(F.cross_entropy, backend="aot_eager")  # traced on fake tensors
x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
for _ in range(6):
    optimizer.zero_grad()
    loss = cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
"""


def test_a_compiled_loss_function_still_gives_every_steps_loss(tmp_path: Path) -> None:
    """The functional-loss wrapper is traced into `torch.compile(F.cross_entropy)`: it must
    not keep the tracer's fake tensor (no loss at all before), the backward gives the loss."""
    script = tmp_path / "compiled_loss.py"
    script.write_text(COMPILED_LOSS)
    doc, _ = run_probes(tmp_path, script, "--steps", "4")
    assert doc.loss.steps == [0, 1, 2, 3]
    assert all(0.5 < v < 3.0 for v in doc.loss.values if v is not None)
