"""The types and validation artifacts generated, run in the real sandbox (local backend) and
offered: one audit of the bundled example with `--artifacts types,validation --apply` shared by
the tests of this module; a near-miss model also called through `forward()` itself on longer
sequences, its layer too, which no hook observes (a direct forward whose layers run through
hooks is observed as the model's call), so the observed shape does not hold everywhere: the
checked run fails and nothing is offered; and a module the sandbox lacks, named in the
verdict."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES
from torchdoctor.agent.approval import approve_all
from torchdoctor.agent.artifacts.approval import apply_approved
from torchdoctor.agent.artifacts.checked_run import MissingModule, checked_run
from torchdoctor.agent.audit import AuditOptions, AuditOutcome, run_audit
from torchdoctor.agent.fixes.codemods import all_codemods
from torchdoctor.agent.harness import Harness
from torchdoctor.agent.probing import RunSummary
from torchdoctor.agent.state import ApprovalAnswer, ApprovalRequest
from torchdoctor.agent.workspace import load_workspace
from torchdoctor.sandbox.config import get_sandbox

pytestmark = pytest.mark.slow


def _audit(project: Path, command: str, apply: bool) -> tuple[AuditOutcome, list[str]]:
    asked: list[str] = []

    def approve(request: ApprovalRequest) -> ApprovalAnswer:
        asked.extend(c.finding_id for c in request.changes)
        return approve_all(request)

    options = AuditOptions(
        target=project,
        run=[command],
        steps=3,
        probes="cheap",  # the artifacts read the run, not the seeded re-runs nor the export try
        artifacts=["types", "validation"],
        apply=apply,
        ignore=sorted(all_codemods()),  # no fix to verify: the artifacts alone are approved
        linters=False,  # the peers say nothing about these artifacts
        write_ledger=False,
    )
    return run_audit(options, approver=approve), asked


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, AuditOutcome, list[str]]:
    project = tmp_path_factory.mktemp("project")
    shutil.copy(EXAMPLES / "train_buggy.py", project / "train_buggy.py")
    outcome, asked = _audit(project, "python train_buggy.py", apply=True)
    return project, outcome, asked


def test_annotations_and_checks_are_offered_approved_and_written(
    audited: tuple[Path, AuditOutcome, list[str]],
) -> None:
    project, outcome, asked = audited
    types, validation = outcome.report.artifacts
    assert (types.state, validation.state) == ("offered", "offered"), (
        types.reason,
        validation.reason,
    )
    assert asked == ["artifact-types", "artifact-validation"]
    assert [c.passed for c in types.checks] == [True]
    assert "jaxtyping + beartype" in types.checks[0].name
    assert all(c.passed for c in validation.checks)
    assert [c.name for c in validation.checks[1:]] == [
        "test_rejects_wrong_shape_x",
        "test_rejects_nan_in_x",
        "test_rejects_wrong_dtype_x",
        "test_rejects_out_of_range_x",  # a value far outside the sampled range
        "test_accepts_a_batch_like_the_observed_ones",
        "test_rejects_batch_out_of_range_tensor_0",
        "test_rejects_batch_nan_in_tensor_0",
        "test_rejects_batch_out_of_range_tensor_1",  # a label equal to the class count
    ]
    text = (project / "train_buggy.py").read_text()
    assert 'self, x: Float32[torch.Tensor, "batch 20"]' in text
    assert ') -> tuple[Float32[torch.Tensor, "batch 4"], Float32[torch.Tensor, "batch 1"]]:' in text
    assert max(len(line) for line in text.splitlines()) <= 100  # the long header wrapped
    assert "from jaxtyping import Float32" in text
    assert "_check_classifier_inputs(self, x)" in text
    assert "if x.dim() != 2 or x.shape[1] != 20:" in text
    # the data boundary: the training loader's batches checked as they leave it
    assert (
        "DataLoader(make_data(), batch_size=32, shuffle=True, collate_fn=_checked_collate)" in text
    )
    assert "tensor 1 must hold class indices in [0, 4)" in text
    assert "DataLoader(make_data(128), batch_size=64)" in text
    assert validation.original == types.content  # built on the annotations, written after them
    assert "artifact written: train_buggy.py" in outcome.report.summary.notes


def test_written_artifacts_settle_1_2_and_2_1(
    audited: tuple[Path, AuditOutcome, list[str]],
) -> None:
    _project, outcome, _asked = audited
    coverage = {c.item: c for c in outcome.report.coverage}
    for item in ("1.2", "2.1"):
        assert coverage[item].verdict == "pass", coverage[item]
        assert "written as train_buggy.py" in coverage[item].reason


def test_the_checks_without_the_annotations_they_were_built_on_are_not_written(
    audited: tuple[Path, AuditOutcome, list[str]], tmp_path: Path
) -> None:
    _project, outcome, _asked = audited
    shutil.copy(EXAMPLES / "train_buggy.py", tmp_path / "train_buggy.py")
    written = apply_approved(tmp_path, [], outcome.report.artifacts, {"artifact-validation"})[1]
    assert not written.paths
    assert "changed since the audit" in written.skipped["artifact-validation"]
    assert (tmp_path / "train_buggy.py").read_text() == (EXAMPLES / "train_buggy.py").read_text()


PADDED = """import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


class Sentences(Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, index):
        return torch.arange(3 + index % 4) % 8, index % 2


def pad(items):
    longest = max(len(tokens) for tokens, _ in items)
    tokens = torch.stack([nn.functional.pad(t, (0, longest - len(t))) for t, _ in items])
    return tokens, torch.tensor([label for _, label in items])


class Bag(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(8, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, tokens):
        return self.head(self.embed(tokens).mean(dim=1))


if __name__ == "__main__":
    torch.manual_seed(0)
    model = Bag()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for tokens, labels in DataLoader(Sentences(), batch_size=2, collate_fn=pad):
        loss = nn.functional.cross_entropy(model(tokens), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
"""


def test_the_projects_own_getitem_and_collate_are_annotated_and_checked_at_run_time(
    tmp_path: Path,
) -> None:
    (tmp_path / "bag.py").write_text(PADDED)
    outcome, _asked = _audit(tmp_path, "python bag.py", apply=False)
    types, validation = outcome.report.artifacts
    assert types.state == "offered", types.reason
    assert "and of what Sentences.__getitem__ and pad return" in types.reason
    assert "jaxtyping + beartype checking the annotated functions" in types.checks[0].name
    assert 'def __getitem__(self, index) -> tuple[Int64[torch.Tensor, "d1"], int]:' in (
        types.content
    )
    assert (
        'def pad(items) -> tuple[Int64[torch.Tensor, "batch d1"], Int64[torch.Tensor, "batch"]]:'
        in types.content
    )
    assert "from jaxtyping import Float32, Int64" in types.content
    # the loader's collate is the project's own: only the model's boundary is checked
    assert validation.state == "offered", validation.reason
    assert "it has a collate_fn of its own" in validation.reason
    assert "_checked_collate" not in validation.content


UNSEEN_SHAPE = """import torch
from torch import nn


class Pooler(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 2)

    def forward(self, x):
        return self.proj.forward(x).mean(dim=1)


if __name__ == "__main__":
    torch.manual_seed(0)
    model = Pooler()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(4):
        loss = model(torch.randn(8, 5, 4)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # longer sequences, through forward() itself and its layer's
            model.forward(torch.randn(2, 12, 4))  # too: no module hook runs, none sees them
"""


def test_a_shape_no_hook_saw_fails_the_checked_run_and_nothing_is_offered(
    tmp_path: Path,
) -> None:
    (tmp_path / "pool.py").write_text(UNSEEN_SHAPE)
    outcome, asked = _audit(tmp_path, "python pool.py", apply=False)
    types, validation = outcome.report.artifacts
    assert (types.state, validation.state) == ("failed", "failed")
    assert 'x: Float32[torch.Tensor, "batch 5 4"]' in types.content
    assert "failed its checked run" in types.reason and "x" in types.checks[0].detail
    assert "must have shape (batch, 5, 4)" in validation.checks[0].detail
    assert not asked  # nothing offered, nothing asked
    coverage = {c.item: c for c in outcome.report.coverage}
    assert coverage["1.2"].verdict == "not-checked"
    assert "--artifacts types: failed" in coverage["1.2"].reason

    workspace = load_workspace(tmp_path, [], 2_000_000)
    run = RunSummary(command="python pool.py", script="pool.py", outcome="ok", summary="")
    lacking = UNSEEN_SHAPE.replace("import torch\n", "import torch\nimport jaxtyping_absent\n")
    with pytest.raises(MissingModule, match="jaxtyping_absent"):
        checked_run(
            Harness(get_sandbox("local")),
            workspace,
            run,
            {"pool.py": lacking},
            ("pool.py", range(10, 12)),
            "needs a module",
            needs=("jaxtyping_absent",),
        )
