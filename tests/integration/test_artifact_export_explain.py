"""The export check and the explanation hooks generated, run in the real sandbox (local
backend, the project's interpreter with torch, onnx, onnxscript, onnxruntime and captum) and
offered: one audit of the bundled example with `--artifacts card,export,explain --apply` (the
card holds the attribution check's result), and a near-miss model whose forward branches on
its input's values (torch.export refuses it, and the verdict names the line)."""

from __future__ import annotations

import shutil
from importlib.util import find_spec
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES
from torchdoctor.agent.approval import approve_all
from torchdoctor.agent.artifacts.export import export_artifact
from torchdoctor.agent.artifacts.models import Artifact, ModelTarget, TensorSpec
from torchdoctor.agent.artifacts.sandboxed import SandboxedRun
from torchdoctor.agent.audit import AuditOptions, AuditOutcome, run_audit
from torchdoctor.agent.fixes.codemods import all_codemods
from torchdoctor.agent.workspace import load_workspace
from torchdoctor.sandbox.config import get_sandbox

# Looked up, not imported: only the sandboxed runs import them, and importing them here cost
# every worker about 2 CPU-seconds at collection, in both steps of scripts/test.sh.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        any(find_spec(name) is None for name in ("onnx", "onnxscript", "onnxruntime", "captum")),
        reason="the artifacts extra is not installed",
    ),
]


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, AuditOutcome]:
    project = tmp_path_factory.mktemp("project")
    shutil.copy(EXAMPLES / "train_buggy.py", project / "train_buggy.py")
    options = AuditOptions(
        target=project,
        run=["python train_buggy.py"],
        steps=3,
        probes="cheap",  # the export artifact (7.3) is its own check, not the probe's try (7.1)
        artifacts=["card", "export", "explain"],  # the card asked first, built last
        apply=True,
        ignore=sorted(all_codemods()),  # no fix to verify: the artifacts alone are approved
        write_ledger=False,
    )
    return project, run_audit(options, approver=approve_all)


def test_the_bundled_classifier_exports_and_agrees_with_eager_in_onnx_runtime(
    audited: tuple[Path, AuditOutcome],
) -> None:
    project, outcome = audited
    _card, export, _explain = outcome.report.artifacts
    assert export.state == "offered", export.reason
    assert [(c.name, c.passed) for c in export.checks] == [
        ("torch.export", True),
        ("onnx", True),
        ("onnxruntime", True),
    ]
    assert "from train_buggy import Classifier" in (project / "export_check.py").read_text()
    coverage = {c.item: c for c in outcome.report.coverage}
    assert coverage["7.3"].verdict == "pass", coverage["7.3"]
    [measured] = export.measured
    assert "outputs within atol 0.0001 + rtol 0.001 of eager" in measured.reason
    assert " ms vs eager " in measured.reason


def test_attributions_are_complete_and_the_hooks_are_written(
    audited: tuple[Path, AuditOutcome],
) -> None:
    project, outcome = audited
    card, _export, explain = outcome.report.artifacts
    assert explain.state == "offered", explain.reason
    assert [c.passed for c in explain.checks] == [True, True, True]
    assert "def group_metrics(" in (project / "explain_hooks.py").read_text()
    coverage = {c.item: c for c in outcome.report.coverage}
    assert coverage["12.2"].verdict == "pass" and "explain_hooks.py" in coverage["12.2"].reason
    assert coverage["12.1"].verdict == "not-applicable", coverage["12.1"]
    bias = card.content.partition("## Bias and explainability")[2].partition("##")[0]
    assert "integrated gradients for Classifier" in bias


GATED = """import torch
from torch import nn


class Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.small = nn.Linear(8, 2)
        self.large = nn.Linear(8, 2)

    def forward(self, x):
        if x.abs().mean() > 1.0:  # a branch on the values: torch.export cannot trace it
            return self.large(x)
        return self.small(x)
"""


def test_a_forward_that_branches_on_values_does_not_export(tmp_path: Path) -> None:
    (tmp_path / "gated.py").write_text(GATED)
    target = ModelTarget(
        file="gated.py",
        module="gated",
        class_name="Gated",
        constructor="Gated()",
        inputs=[TensorSpec(shape=[4, 8], dtype="float32")],
        outputs=[TensorSpec(shape=[4, 2], dtype="float32")],
        script="serve.py",
    )
    runner = SandboxedRun(get_sandbox(None), load_workspace(tmp_path))
    artifact: Artifact = export_artifact(target, runner, ["gated.py"])
    assert artifact.state == "failed", artifact.reason
    [measured] = artifact.measured
    assert measured.verdict == "fail"
    assert "torch.export: failed (GuardOnDataDependentSymNode: Could not guard" in measured.reason
    assert "(at gated.py:12 in forward)" in measured.reason  # the line, from torch's message
