"""Artifacts without a sandbox run: which model a test can rebuild (on the bundled examples),
the rendered suite (it parses and passes ruff), pytest's report read back, the approval
changes and the writing (new files only), and what the artifacts say about the checklist."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import EXAMPLES
from torchdoctor.agent.artifacts.approval import apply_approved, artifact_changes
from torchdoctor.agent.artifacts.coverage import accepted_coverage, artifact_evidence
from torchdoctor.agent.artifacts.models import Artifact, ModelTarget, TensorSpec
from torchdoctor.agent.artifacts.sandboxed import parse_pytest_summary
from torchdoctor.agent.artifacts.target import NoTarget, find_target
from torchdoctor.agent.artifacts.testsuite import TEST_NAMES, render_tests, suite_path
from torchdoctor.agent.cli import app
from torchdoctor.agent.evidence.probe_schema import DataFlow, FlowCall, Outcome, TensorInfo
from torchdoctor.agent.localise import phrase
from torchdoctor.agent.probing import RunSummary, _error_line
from torchdoctor.agent.reasoning.base import PointRequest
from torchdoctor.agent.reasoning.offline import OfflineReasoner
from torchdoctor.agent.workspace import load_workspace


def _run(script: str, model: str, inputs: list[TensorInfo]) -> RunSummary:
    call = FlowCall(index=0, module="", type=model, depth=0, inputs=inputs, outputs=inputs)
    return RunSummary(
        command=f"python {script}",
        script=script,
        outcome="completed-steps",
        summary="",
        dataflow=DataFlow(step=0, calls=[call]),
    )


def _tokens(*shape: int) -> TensorInfo:
    return TensorInfo(shape=list(shape), dtype="int64", device="cpu")


def test_the_constructor_comes_from_the_code_literals_and_names_bound_to_literals() -> None:
    workspace = load_workspace(EXAMPLES / "train_lm_slow.py", [], 2_000_000)
    target = find_target(workspace, [_run("train_lm_slow.py", "TinyGPT", [_tokens(2, 256)])])
    assert isinstance(target, ModelTarget)
    assert target.constructor == "TinyGPT(4096, 256, dim=384, heads=6, layers=6)"
    assert (target.module, target.class_name) == ("train_lm_slow", "TinyGPT")


def test_a_model_built_with_its_defaults_and_what_stops_a_target() -> None:
    serve = load_workspace(EXAMPLES / "serve_model.py", [], 2_000_000)
    found = find_target(serve, [_run("serve_model.py", "TextClassifier", [_tokens(8, 16)])])
    assert isinstance(found, ModelTarget) and found.constructor == "TextClassifier()"
    nothing = find_target(serve, [])
    assert isinstance(nothing, NoTarget) and "--run" in nothing.reason
    failed = _run("serve_model.py", "TextClassifier", []).model_copy(
        update={
            "outcome": "script-error",
            "dataflow": DataFlow(),
            "error": "UnpicklingError: Weights only load failed. This file can still be loaded",
        }
    )
    no_call = find_target(serve, [failed])
    assert isinstance(no_call, NoTarget)
    assert no_call.reason.endswith("script-error (UnpicklingError: Weights only load failed.))")
    stranger = find_target(serve, [_run("serve_model.py", "Bert", [_tokens(8, 16)])])
    assert isinstance(stranger, NoTarget) and "Bert is not defined" in stranger.reason


def test_a_run_error_names_its_type_once() -> None:
    # the harness's detail is "Type: message" already (serve_model.py's torch.load refusal)
    raised = Outcome(
        kind="script-error",
        detail="UnpicklingError: Weights only load failed.\nThis file can still be loaded",
        error_type="UnpicklingError",
    )
    assert _error_line(raised) == (
        "UnpicklingError: Weights only load failed. This file can still be loaded"
    )
    bare = raised.model_copy(update={"detail": "Weights only load failed."})
    assert _error_line(bare) == "UnpicklingError: Weights only load failed."
    assert _error_line(Outcome(kind="script-finished", detail="done")) == ""


def test_a_module_that_trains_on_import_is_not_a_target(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(
        "import torch\nfrom torch import nn\n\n\nclass Net(nn.Module):\n    pass\n\n\n"
        "model = Net()\ntorch.save(model, 'm.pt')\n"
    )
    workspace = load_workspace(tmp_path, [], 2_000_000)
    found = find_target(workspace, [_run("train.py", "Net", [_tokens(2, 3)])])
    assert isinstance(found, NoTarget) and "__main__" in found.reason


def _classifier() -> ModelTarget:
    return ModelTarget(
        file="train_buggy.py",
        module="train_buggy",
        class_name="Classifier",
        constructor="Classifier()",
        inputs=[TensorSpec(shape=[32, 20], dtype="float32")],
        outputs=[TensorSpec(shape=[32, 4], dtype="float32")],
        script="train_buggy.py",
    )


def test_the_rendered_suite_parses_and_is_clean_for_ruff(tmp_path: Path) -> None:
    text = render_tests(_classifier())
    tree = ast.parse(text)
    tests = [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name[:5] == "test_"]
    assert tests == list(TEST_NAMES)
    kept = render_tests(_classifier(), ("test_overfits_one_batch",))
    assert "def test_overfits_one_batch" in kept and "def test_output_shapes" not in kept
    path = tmp_path / "test_train_buggy_ml.py"
    path.write_text(text)
    ruff = [sys.executable, "-m", "ruff", "check", "--isolated", "--select", "E,F,W,B"]
    done = subprocess.run([*ruff, str(path)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout
    assert suite_path(_classifier(), ["train_buggy.py"]) == "test_train_buggy_ml.py"
    assert suite_path(_classifier(), ["tests/test_a.py"]) == "tests/test_train_buggy_ml.py"


def test_pytest_progress_and_summary_lines_are_read_back() -> None:
    stdout = (
        "t.py::test_a PASSED                 [ 33%]\n"
        "t.py::test_b FAILED                 [ 66%]\n"
        "t.py::test_c PASSED                 [100%]\n"
        "t.py::test_c ERROR                  [100%]\n"
        "other.py::test_d PASSED             [100%]\n"
        "FAILED t.py::test_b - AssertionError: no gradient reaches ['aux.weight']\n"
    )
    outcomes = {o.name: o for o in parse_pytest_summary(stdout, "t.py")}
    assert set(outcomes) == {"test_a", "test_b", "test_c"}
    assert outcomes["test_a"].passed and not outcomes["test_c"].passed
    assert "aux.weight" in outcomes["test_b"].detail


def _offered(path: str = "test_m_ml.py") -> Artifact:
    return Artifact(
        kind="tests",
        state="offered",
        items=["5.2", "5.3"],
        reason="9 ML test(s) for Net pass in the sandbox",
        path=path,
        content="def test_x():\n    assert True\n",
    )


def test_offered_artifacts_are_approval_changes_and_only_new_files_are_written(
    tmp_path: Path,
) -> None:
    (change,) = artifact_changes([_offered(), _offered().model_copy(update={"state": "failed"})])
    assert change.finding_id == "artifact-tests" and "+def test_x():" in change.diff
    assert apply_approved(tmp_path, [], [_offered()], set())[1].skipped == {
        "artifact-tests": "not approved"
    }
    written = apply_approved(tmp_path, [], [_offered()], {"artifact-tests"})[1]
    assert written.paths == ["test_m_ml.py"]
    assert (tmp_path / "test_m_ml.py").read_text() == _offered().content
    (tmp_path / "test_m_ml.py").write_text("mine\n")
    again = apply_approved(tmp_path, [], [_offered()], {"artifact-tests"})[1]
    assert not again.paths and "not overwritten" in again.skipped["artifact-tests"]
    assert (tmp_path / "test_m_ml.py").read_text() == "mine\n"
    escaping = apply_approved(tmp_path, [], [_offered("../outside.py")], {"artifact-tests"})[1]
    assert not escaping.paths and not (tmp_path.parent / "outside.py").exists()


def test_an_offered_suite_leaves_5_2_and_5_3_not_checked_until_written() -> None:
    evidence = [ev for _point, ev in artifact_evidence([_offered()])]
    request = PointRequest(point=5, evidence=evidence, rules_run=["no-ml-tests"])
    coverage = {c.item: c for c in OfflineReasoner().reason(request).coverage}
    for item in ("5.2", "5.3"):
        assert coverage[item].verdict == "not-checked"
        assert coverage[item].reason.startswith("no test file was found, so nothing shows")
        assert "offered as test_m_ml.py" in coverage[item].reason
    after = accepted_coverage(list(coverage.values()), [_offered()], ["artifact-tests"])
    settled = {c.item: c for c in after}
    assert settled["5.2"].verdict == "pass" and "written as test_m_ml.py" in settled["5.2"].reason
    assert settled["5.4"] == coverage["5.4"]
    french = phrase(settled["5.3"].reason, "fr")
    assert "passent dans le bac à sable" in french and "écrit sous test_m_ml.py" in french


@pytest.mark.parametrize(
    ("given", "message"), [("tests,nope", "unknown ['nope']"), ("tests;card", "unknown")]
)
def test_an_unknown_artifact_is_a_one_line_usage_error(given: str, message: str) -> None:
    result = CliRunner().invoke(app, ["audit", str(EXAMPLES), "--artifacts", given])
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_the_api_takes_artifacts_with_the_audit_and_asks_before_writing_them(
    tmp_path: Path,
) -> None:
    pytest.importorskip("fastapi")
    from pydantic import ValidationError

    from torchdoctor.agent.audit import AuditChoices
    from torchdoctor.api.models import AuditRecord
    from torchdoctor.api.settings import ApiSettings
    from torchdoctor.api.worker import audit_options

    choices = AuditChoices.model_validate({"artifacts": ["tests", "card"], "run": ["python t.py"]})
    record = AuditRecord(
        id="a1", tenant="t", state="queued", options=choices, workdir=str(tmp_path), created_at=0
    )
    options = audit_options(record, ApiSettings(home=tmp_path / "home"))
    assert options.artifacts == ["tests", "card"] and options.apply
    with pytest.raises(ValidationError):
        AuditChoices.model_validate({"artifacts": ["weights"]})
