"""Host copies of audited code are bounded: a single-file audit copies the file's folder (a
home or downloads folder, perhaps) and a repository may hold datasets; a tree over the budget
is refused before any of it is written (sparse files: their size, not their blocks, counts),
and nothing of the attempt is left."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.diffs import unified_diff
from torchdoctor.agent.fixes.models import Patch
from torchdoctor.agent.fixes.verify import Claim, FixSpec, Verifier
from torchdoctor.agent.fixes.workcopy import workspace_copy
from torchdoctor.agent.models import Severity
from torchdoctor.sandbox.workspace import MAX_COPY_MB, WorkspaceError, stage_workspace

SCRIPT = "import torch\n\nx = torch.zeros(1)\n"


@pytest.fixture
def folder_with_data(tmp_path: Path) -> Path:
    """A script beside a (sparse) data file one MB over the copy budget."""
    root = tmp_path / "downloads"
    root.mkdir()
    (root / "train.py").write_text(SCRIPT, encoding="utf-8")
    with open(root / "dataset.bin", "wb") as handle:
        handle.truncate((MAX_COPY_MB + 1) * 2**20)
    return root


def test_staging_refuses_a_tree_over_the_budget_and_leaves_nothing(
    folder_with_data: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    with pytest.raises(WorkspaceError, match=f"more than {MAX_COPY_MB} MB"):
        stage_workspace(folder_with_data, runs)
    assert list(runs.iterdir()) == []


def test_a_quota_is_the_budget_and_a_tree_within_it_is_copied(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "train.py").write_text(SCRIPT, encoding="utf-8")
    (root / "weights.bin").write_bytes(b"\0" * (3 * 2**20))
    runs = tmp_path / "runs"
    runs.mkdir()
    with pytest.raises(WorkspaceError, match="more than 2 MB"):
        stage_workspace(root, runs, max_mb=2)
    copy = stage_workspace(root, runs, max_mb=4)
    assert (copy / "weights.bin").stat().st_size == 3 * 2**20


def test_a_fix_copy_refuses_a_tree_over_the_budget_and_leaves_nothing(
    folder_with_data: Path,
) -> None:
    before = set(Path(tempfile.gettempdir()).glob(f"td-ws-{os.getpid()}-*"))
    with pytest.raises(WorkspaceError, match="more than"), workspace_copy(folder_with_data):
        pytest.fail("the copy was made")
    assert set(Path(tempfile.gettempdir()).glob(f"td-ws-{os.getpid()}-*")) == before


def test_a_fix_on_a_tree_too_large_to_copy_fails_its_first_step_with_the_reason(
    folder_with_data: Path,
) -> None:
    codemod = codemod_for("no-torch-seed")
    assert codemod is not None
    seeded = SCRIPT.replace("import torch\n", "import torch\n\ntorch.manual_seed(0)\n")
    verifier = Verifier(folder_with_data, object(), ["python", "train.py"])  # type: ignore[arg-type]

    steps = verifier.verify(
        Patch(
            finding_id="TD-1",
            rule="no-torch-seed",
            diff=unified_diff("train.py", SCRIPT, seeded),
            files=["train.py"],
        ),
        Claim(frozenset({"no-torch-seed"}), Severity.MEDIUM),
        FixSpec.of(codemod),
    )

    assert [(s.step, s.ok) for s in steps] == [("patch-applies", False)]
    assert f"more than {MAX_COPY_MB} MB" in steps[0].detail
    assert verifier.baseline_run is None  # no run was started
