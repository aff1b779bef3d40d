"""The export and explanation artifacts without a sandbox run: the generated files parse and
name the model; each stage report the export script can print maps to its verdict (a sandbox
that answers with that report line stands in for the run here; the real runs are in
tests/integration/test_artifact_export_explain.py); what the runs measured reaches the
coverage as measured."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from torchdoctor.agent.artifacts.coverage import artifact_evidence
from torchdoctor.agent.artifacts.explain import explain_artifact, render_check, render_hooks
from torchdoctor.agent.artifacts.export import (
    REPORT_MARK,
    export_artifact,
    parse_stages,
)
from torchdoctor.agent.artifacts.export import (
    render_check as render_export,
)
from torchdoctor.agent.artifacts.models import Artifact, ItemVerdict, ModelTarget, TensorSpec
from torchdoctor.agent.artifacts.sandboxed import SandboxedRun
from torchdoctor.agent.localise import phrase
from torchdoctor.agent.workspace import load_workspace
from torchdoctor.sandbox.models import Isolation, Job, Outcome, ResourceUsage, RunResult

TARGET = ModelTarget(
    file="models/net.py",
    module="models.net",
    class_name="Net",
    constructor="Net(16, hidden=32)",
    inputs=[TensorSpec(shape=[8, 16], dtype="float32")],
    outputs=[TensorSpec(shape=[8, 3], dtype="float32")],
    script="train.py",
)
ISOLATION = Isolation(
    backend="scripted", mechanism="rlimits", user="u", network="none", filesystem="copy"
)
AGREES = {"state": "agrees", "max_abs_diff": 1.2e-7, "eager_ms": 0.04, "ort_ms": 0.01}
NO_TRT = {"state": "not-tried", "error": "needs torch_tensorrt"}


class _AnsweringSandbox:
    """Answers every job with the stdout given (the line the generated script prints)."""

    def __init__(self, stdout: str, outcome: Outcome = Outcome.OK) -> None:
        self.stdout = stdout
        self.outcome = outcome
        self.jobs: list[Job] = []

    @property
    def isolation(self) -> Isolation:
        return ISOLATION

    def run(self, job: Job) -> RunResult:
        self.jobs.append(job)
        return RunResult(
            outcome=self.outcome,
            exit_code=0 if self.outcome is Outcome.OK else None,
            stdout=self.stdout,
            usage=ResourceUsage(wall_s=1.0),
            isolation=ISOLATION,
        )

    async def arun(self, job: Job) -> RunResult:
        return self.run(job)


def _report(**stages: dict[str, object]) -> str:
    """The lines the export script prints, one per stage as it finishes."""
    names = {"torch_export": "torch.export"}
    lines = [
        REPORT_MARK + json.dumps({"stage": names.get(name, name), **verdict})
        for name, verdict in stages.items()
    ]
    return "\n".join(["a progress line", *lines]) + "\n"


def _export(tmp_path: Path, stdout: str) -> Artifact:
    (tmp_path / "net.py").write_text("import torch\n")
    runner = SandboxedRun(_AnsweringSandbox(stdout), load_workspace(tmp_path))
    return export_artifact(TARGET, runner, ["net.py"])


def test_the_generated_files_parse_and_build_the_observed_model() -> None:
    for text in (render_export(TARGET), render_check(TARGET), render_hooks(TARGET)):
        ast.parse(text)
    script = render_export(TARGET)
    assert "from models.net import Net" in script and "model = Net(16, hidden=32).eval()" in script
    assert 'INPUTS = [([8, 16], "float32")]' in script
    assert "ATOL, RTOL = 0.0001, 0.001" in script


def test_an_export_that_runs_and_agrees_passes_7_3_with_its_figures(tmp_path: Path) -> None:
    ok = {"state": "exported"}
    artifact = _export(
        tmp_path, _report(torch_export=ok, onnx=ok, onnxruntime=AGREES, tensorrt=NO_TRT)
    )
    assert (artifact.state, artifact.path) == ("offered", "export_check.py")
    [measured] = artifact.measured
    assert (measured.item, measured.verdict) == ("7.3", "pass")
    assert "within atol 0.0001 + rtol 0.001 of eager" in measured.reason
    assert "0.01 ms vs eager 0.04 ms per batch, one thread each (4.00x)" in measured.reason
    assert "tensorrt: not tried (needs torch_tensorrt)" in measured.reason
    assert "un thread chacun (4.00x)" in phrase(measured.reason, "fr")
    assert [c.name for c in artifact.checks] == ["torch.export", "onnx", "onnxruntime"]


def test_a_model_torch_export_refuses_fails_7_3_with_the_error(tmp_path: Path) -> None:
    failed = {"state": "failed", "error": "GuardOnDataDependentSymNode: Could not guard"}
    ok = {"state": "exported"}
    artifact = _export(
        tmp_path, _report(torch_export=failed, onnx=ok, onnxruntime=AGREES, tensorrt=NO_TRT)
    )
    assert artifact.state == "failed"
    [measured] = artifact.measured
    assert measured.verdict == "fail"
    assert "torch.export: failed (GuardOnDataDependentSymNode: Could not guard)" in measured.reason
    assert "keeps one path of any data-dependent code" in measured.reason
    french = phrase(measured.reason, "fr")
    assert french.startswith("Net ne s'exporte pas ; torch.export : en échec (")
    assert "onnx : exporté" in french


def test_outputs_beyond_the_tolerance_fail(tmp_path: Path) -> None:
    ok = {"state": "exported"}
    differs = {"state": "differs", "max_abs_diff": 0.3, "eager_ms": 0.04, "ort_ms": 0.01}
    artifact = _export(
        tmp_path, _report(torch_export=ok, onnx=ok, onnxruntime=differs, tensorrt=NO_TRT)
    )
    assert artifact.measured[0].verdict == "fail"
    assert "differ from eager beyond atol 0.0001 + rtol 0.001 (max |diff| 0.3)" in (
        artifact.measured[0].reason
    )
    assert "fell back" not in artifact.measured[0].reason


def test_a_missing_dependency_is_named_not_failed(tmp_path: Path) -> None:
    artifact = _export(
        tmp_path,
        _report(
            torch_export={"state": "exported"},
            onnx={"state": "missing", "error": "onnxscript"},
            onnxruntime={"state": "skipped", "error": "no ONNX model"},
            tensorrt=NO_TRT,
        ),
    )
    assert artifact.state == "not-checked"
    assert artifact.measured[0].verdict == "not-checked"
    assert "onnx: not tried, onnxscript not installed" in artifact.reason


def test_stages_a_time_limit_cut_are_unfinished_not_failed(tmp_path: Path) -> None:
    artifact = _export(tmp_path, _report(torch_export={"state": "exported"}))
    assert artifact.state == "not-checked"
    assert "onnx: unfinished (the run ended first (ok))" in artifact.reason


@pytest.mark.parametrize(
    "stdout",
    [
        "Traceback (most recent call last):\nImportError: cannot import name 'Net'\n",
        REPORT_MARK + '{"stage": "onnx", "state": "exploded"}\n',
        REPORT_MARK + "{not json\n",
    ],
)
def test_no_report_or_a_malformed_one_is_not_checked(tmp_path: Path, stdout: str) -> None:
    assert parse_stages(stdout, "ok") == {}
    artifact = _export(tmp_path, stdout)
    assert artifact.state == "not-checked" and "gave no report" in artifact.reason


def test_missing_captum_is_named(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text("import torch\n")
    workspace = load_workspace(tmp_path)
    collection_error = (
        "ERROR collecting test_explain_check_by_torchdoctor.py\n"
        "E   ModuleNotFoundError: No module named 'captum'\n"
    )
    runner = SandboxedRun(_AnsweringSandbox(collection_error), workspace)
    artifact = explain_artifact(TARGET, runner, workspace)
    assert artifact.state == "not-checked"
    assert artifact.reason.startswith("captum is not installed where the code runs")
    assert [(m.item, m.verdict) for m in artifact.measured] == [("12.2", "not-checked")]


def test_a_named_sensitive_attribute_says_why_groups_were_not_compared(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(
        "import torch\n\n\ndef load(df):\n    return torch.tensor(df['sex'].values)\n"
    )
    workspace = load_workspace(tmp_path)
    passed = (
        "test_explain_check_by_torchdoctor.py::test_attributions_are_finite PASSED\n"
        "test_explain_check_by_torchdoctor.py::test_integrated_gradients_are_complete PASSED\n"
        "test_explain_check_by_torchdoctor.py::"
        "test_group_metrics_report_a_planted_gap_and_no_other PASSED\n"
    )
    artifact = explain_artifact(
        TARGET, SandboxedRun(_AnsweringSandbox(passed), workspace), workspace
    )
    assert (artifact.state, artifact.path) == ("offered", "explain_hooks.py")
    [groups] = artifact.measured
    assert (groups.item, groups.verdict) == ("12.1", "not-checked")
    assert "names sex, but Net's observed inputs (float32[8, 16]) carry no column names" in (
        groups.reason
    )


def test_measured_verdicts_reach_the_coverage_as_measured() -> None:
    artifact = Artifact(
        kind="export",
        state="failed",
        items=["7.3"],
        reason="an export check for Net",
        measured=[ItemVerdict(item="7.3", verdict="fail", reason="Net does not export: ...")],
    )
    offered = Artifact(
        kind="explain",
        state="offered",
        items=["12.2"],
        reason="integrated gradients for Net",
        path="explain_hooks.py",
        content="import torch\n",
        measured=[ItemVerdict(item="12.1", verdict="not-checked", reason="no column names")],
    )
    said = {
        ev.data["items"][0]: (ev.data["verdict"], ev.message)
        for _point, ev in artifact_evidence([artifact, offered])
    }
    assert said["7.3"] == ("fail", "Net does not export: ...")
    assert said["12.1"] == ("not-checked", "no column names")
    assert said["12.2"][0] == "not-checked" and "offered as explain_hooks.py" in said["12.2"][1]


def test_integer_inputs_without_an_embedding_are_not_held_against_the_code(
    tmp_path: Path,
) -> None:
    (tmp_path / "net.py").write_text("import torch\n")
    workspace = load_workspace(tmp_path)
    check = "test_explain_check_by_torchdoctor.py"
    raised = "ValueError: nothing to attribute to: integer inputs and no embedding layer"
    stdout = (
        f"{check}::test_attributions_are_finite FAILED\n"
        f"{check}::test_integrated_gradients_are_complete FAILED\n"
        f"{check}::test_group_metrics_report_a_planted_gap_and_no_other PASSED\n"
        f"FAILED {check}::test_attributions_are_finite - {raised}\n"
        f"FAILED {check}::test_integrated_gradients_are_complete - {raised}\n"
    )
    runner = SandboxedRun(_AnsweringSandbox(stdout), workspace)
    artifact = explain_artifact(TARGET, runner, workspace)
    assert artifact.state == "not-checked"
    assert [(m.item, m.verdict) for m in artifact.measured] == [("12.2", "not-checked")]
    assert "no embedding layer" in artifact.reason


def test_an_attribution_check_cut_by_the_time_limit_says_so(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text("import torch\n")
    workspace = load_workspace(tmp_path)
    collected = "collecting ... collected 3 items\ntest_explain_check_by_torchdoctor.py::"
    runner = SandboxedRun(_AnsweringSandbox(collected, Outcome.TIMEOUT), workspace)
    artifact = explain_artifact(TARGET, runner, workspace)
    assert artifact.state == "not-checked"
    assert artifact.reason.startswith(
        "the attribution check on Net did not finish within the sandbox's 240 s limit"
    )
