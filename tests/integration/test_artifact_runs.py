"""Artifacts generated, run in the real sandbox (local backend) and offered: one audit of the
bundled example with `--artifacts tests --apply` shared by the tests of this module, and a
near-miss model whose unused layer makes one generated test fail (it is left out, the rest
offered)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES
from torchdoctor.agent.approval import approve_all
from torchdoctor.agent.artifacts.ml_tests import ml_tests_artifact
from torchdoctor.agent.artifacts.models import CheckOutcome, ModelTarget, TensorSpec
from torchdoctor.agent.artifacts.sandboxed import SandboxedRun
from torchdoctor.agent.artifacts.testsuite import TEST_NAMES
from torchdoctor.agent.audit import AuditOptions, AuditOutcome, run_audit
from torchdoctor.agent.fixes.codemods import all_codemods
from torchdoctor.agent.reasoning.offline import _not_checked_reason
from torchdoctor.agent.state import ApprovalAnswer, ApprovalRequest
from torchdoctor.agent.workspace import load_workspace
from torchdoctor.sandbox.config import get_sandbox

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, AuditOutcome, list[str]]:
    project = tmp_path_factory.mktemp("project")
    shutil.copy(EXAMPLES / "train_buggy.py", project / "train_buggy.py")
    asked: list[str] = []

    def approve(request: ApprovalRequest) -> ApprovalAnswer:
        asked.extend(c.finding_id for c in request.changes)
        return approve_all(request)

    options = AuditOptions(
        target=project,
        run=["python train_buggy.py"],
        steps=3,
        artifacts=["tests", "card", "drift"],
        apply=True,
        ignore=sorted(all_codemods()),  # no fix to verify: the artifact alone is approved
        write_ledger=False,
    )
    return project, run_audit(options, approver=approve), asked


def test_the_suite_is_offered_approved_and_written(
    audited: tuple[Path, AuditOutcome, list[str]],
) -> None:
    project, outcome, asked = audited
    artifact = outcome.report.artifacts[0]
    assert artifact.state == "offered", artifact.reason
    assert asked == ["artifact-tests", "artifact-card", "artifact-drift"]
    assert artifact.path == "test_train_buggy_ml.py"
    assert (project / artifact.path).read_text() == artifact.content
    assert "from train_buggy import Classifier" in artifact.content
    assert all(check.passed for check in artifact.checks)
    assert f"artifact written: {artifact.path}" in outcome.report.summary.notes


def test_written_tests_settle_5_2_and_5_3(
    audited: tuple[Path, AuditOutcome, list[str]],
) -> None:
    _project, outcome, _asked = audited
    coverage = {c.item: c for c in outcome.report.coverage}
    for item in ("5.2", "5.3"):
        assert coverage[item].verdict == "pass"
        assert "written as test_train_buggy_ml.py" in coverage[item].reason


def test_the_card_and_the_drift_monitor_are_offered_written_and_settle_their_items(
    audited: tuple[Path, AuditOutcome, list[str]],
) -> None:
    project, outcome, _asked = audited
    _tests, card, drift = outcome.report.artifacts
    assert (card.state, card.path, drift.state, drift.path) == (
        "offered",
        "MODEL_CARD.md",
        "offered",
        "drift_monitor.py",
    ), (card.reason, drift.reason)
    text = (project / "MODEL_CARD.md").read_text()
    assert "- Parameters: 1,669 (1,669 trainable)" in text
    assert "`direct-forward-call` (low)" in text and "TODO" in text
    assert [c.passed for c in drift.checks] == [True, True]
    assert "class DriftMonitor" in (project / "drift_monitor.py").read_text()
    coverage = {c.item: c for c in outcome.report.coverage}
    assert coverage["12.3"].verdict == "pass" and "MODEL_CARD.md" in coverage["12.3"].reason
    assert coverage["5.4"].verdict == "pass" and "drift_monitor.py" in coverage["5.4"].reason


def test_no_item_is_left_not_checked_without_naming_what_is_missing(
    audited: tuple[Path, AuditOutcome, list[str]],
) -> None:
    _project, outcome, _asked = audited
    unchecked = [c for c in outcome.report.coverage if c.verdict == "not-checked"]
    turned_off = {"6.2", "6.5", "8.2"}  # the fixable rules are ignored by this audit
    assert {c.item for c in unchecked} <= {"1.2", "2.1", "3.2", "6.3", "7.3", "9.5", "12.2"} | (
        turned_off
    )
    bare = {"no automated check covers this item yet", _not_checked_reason("3.2")}
    for entry in unchecked:
        assert entry.reason not in bare and "covers it yet" not in entry.reason, entry
        if entry.item in turned_off:
            assert "rule(s) turned off: " in entry.reason, entry


UNUSED_LAYER = """import torch
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(6, 3)
        self.spare = nn.Linear(3, 3)  # built, never called

    def forward(self, x):
        return self.body(x)


if __name__ == "__main__":
    print(Net()(torch.randn(4, 6)))
"""


NET = ModelTarget(
    file="net.py",
    module="net",
    class_name="Net",
    constructor="Net()",
    inputs=[TensorSpec(shape=[4, 6], dtype="float32")],
    outputs=[TensorSpec(shape=[4, 3], dtype="float32")],
    script="net.py",
)
"""The model of UNUSED_LAYER's net.py, as a run observes it."""


def test_a_test_that_fails_on_the_code_is_left_out_and_named(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(UNUSED_LAYER)
    workspace = load_workspace(tmp_path, [], 2_000_000)
    artifact = ml_tests_artifact(NET, SandboxedRun(get_sandbox(None), workspace), ["net.py"])
    assert artifact.state == "offered", artifact.reason
    failed = {c.name: c.detail for c in artifact.checks if not c.passed}
    assert list(failed) == ["test_gradients_reach_every_trainable_parameter"]
    assert "spare.weight" in failed["test_gradients_reach_every_trainable_parameter"]
    assert "def test_gradients_reach" not in artifact.content
    assert "left out because they fail on the current code" in artifact.reason


class _TimeLimited(SandboxedRun):
    """The real sandbox, whose first run reports only the tests that finished before a time
    limit came (the first five), as a slow model on a busy CPU does."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.calls = 0

    def pytest(
        self, path: str, text: str, beside: dict[str, str] | None = None
    ) -> list[CheckOutcome] | str:
        self.calls += 1
        outcomes = super().pytest(path, text, beside)
        return outcomes[:5] if self.calls == 1 and isinstance(outcomes, list) else outcomes


def test_tests_cut_by_the_time_limit_are_not_said_to_fail(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(UNUSED_LAYER.replace("self.spare", "# self.spare"))
    workspace = load_workspace(tmp_path, [], 2_000_000)
    runner = _TimeLimited(get_sandbox(None), workspace)
    artifact = ml_tests_artifact(NET, runner, ["net.py"])
    assert artifact.state == "offered" and runner.calls == 2, artifact.reason
    cut = [c.name for c in artifact.checks if not c.passed]
    assert cut == list(TEST_NAMES[5:])
    assert "fail on the current code" not in artifact.reason
    assert artifact.reason == (
        f"5 ML test(s) for Net pass in the sandbox; {len(cut)} left out because they did not "
        f"finish within the sandbox's time limit ({', '.join(cut)})"
    )
