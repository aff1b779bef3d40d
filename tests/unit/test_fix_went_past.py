"""A fix in code the original run went past for good (a `--resume` branch not taken) is judged
from the original's run alone, when it recorded that file's lines: the fixed run would go past
it too, so none is made (on an H100, pytorch-cifar's `torch.load` fix cost a 39 s run)."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from tests.unit.test_fixes_run_reuse import _Runs
from torchdoctor.agent.fixes import verify
from torchdoctor.agent.fixes.codemods.base import EXACT_RTOL, healthy_run
from torchdoctor.agent.fixes.diffs import unified_diff
from torchdoctor.agent.fixes.models import FixKind, Patch, SmokeRun
from torchdoctor.agent.fixes.verify import Claim, FixSpec, Verifier
from torchdoctor.agent.harness import Harness
from torchdoctor.agent.models import Severity

RESUMED = """import torch

resume = False
model = torch.nn.Linear(2, 2)
if resume:
    model.load_state_dict(torch.load("ckpt.pt"))
for step in range(3):
    model(torch.zeros(1, 2)).sum().backward()
"""
IN_THE_LOOP = """import torch

model = torch.nn.Linear(2, 2)
for step in range(3):
    if step == 2:
        model.load_state_dict(torch.load("ckpt.pt"))
    model(torch.zeros(1, 2)).sum().backward()
"""
RAN = {"train.py": [1, 3, 4, 5, 7, 8]}  # the resume branch (6) never ran; the loop after it did
SPEC = FixSpec(kind=FixKind.REFACTOR, rtol=EXACT_RTOL, symptom=healthy_run)


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> _Runs:
    runner = _Runs()
    monkeypatch.setattr(verify, "smoke_run", runner)
    return runner


def _verify(
    tmp_path: Path, source: str, executed: dict[str, list[int]]
) -> list[verify.Verification]:
    root = tmp_path / "project"
    root.mkdir()
    (root / "train.py").write_text(source)
    fixed = source.replace('torch.load("ckpt.pt")', 'torch.load("ckpt.pt", map_location="cpu")')
    baseline = SmokeRun(ok=True, losses=[1.0], executed_lines=executed)
    harness = cast(Harness, object())  # never called: smoke_run is replaced
    verifier = Verifier(root, harness, ["python", "train.py"], steps=3, baseline=baseline)
    patch = Patch(
        finding_id="TD-1", rule="r", diff=unified_diff("train.py", source, fixed), files=[]
    )
    return verifier.verify(patch, Claim(frozenset({"probe-x"}), Severity.MEDIUM), SPEC)


def test_a_branch_the_original_went_past_is_judged_without_a_run(
    runs: _Runs, tmp_path: Path
) -> None:
    last = _verify(tmp_path, RESUMED, RAN)[-1]
    assert runs.calls == 0
    assert (last.step, last.ok) == ("executed-change", False)
    assert "the original run went past the code the fix changes (train.py:6" in last.detail
    assert "none was made" in last.detail


def test_a_branch_inside_a_loop_may_still_be_taken_so_the_fix_runs(
    runs: _Runs, tmp_path: Path
) -> None:
    """Near miss: `if step == 2:` in a loop the harness stopped may run at a later step."""
    _verify(tmp_path, IN_THE_LOOP, {"train.py": [1, 3, 4, 5, 7]})
    assert runs.calls >= 1


def test_without_the_originals_lines_the_fix_runs(runs: _Runs, tmp_path: Path) -> None:
    _verify(tmp_path, RESUMED, {})
    assert runs.calls >= 1
