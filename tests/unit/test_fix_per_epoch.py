"""`persistent_workers` saves the workers' start at each new epoch, never a step inside one:
when the original's run began no second epoch on a loader with workers, the fix is judged
untimed before any run (on an H100, kuangliu/pytorch-cifar's 20 steps of a 391-batch epoch
spent 126 s of timing runs to learn that)."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from tests.unit.test_fixes_run_reuse import _Runs
from torchdoctor.agent.fixes import verify
from torchdoctor.agent.fixes.codemods.persistent_workers_off import PersistentWorkersOffFix
from torchdoctor.agent.fixes.diffs import unified_diff
from torchdoctor.agent.fixes.models import Patch, SmokeRun
from torchdoctor.agent.fixes.verify import Claim, FixSpec, Verifier
from torchdoctor.agent.harness import Harness
from torchdoctor.agent.models import Severity

FIXTURES = Path(__file__).parents[1] / "fixtures" / "fixes" / "persistent-workers-off"
RULE = PersistentWorkersOffFix.rule


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> _Runs:
    runner = _Runs()
    monkeypatch.setattr(verify, "smoke_run", runner)
    return runner


def _verify(tmp_path: Path, baseline: SmokeRun) -> list[verify.Verification]:
    before = (FIXTURES / "before.py").read_text()
    after = (FIXTURES / "after.py").read_text()
    root = tmp_path / "project"
    root.mkdir()
    (root / "train.py").write_text(before)
    harness = cast(Harness, object())  # never called: smoke_run is replaced
    verifier = Verifier(root, harness, ["python", "train.py"], steps=20, baseline=baseline)
    patch = Patch(
        finding_id="TD-1", rule=RULE, diff=unified_diff("train.py", before, after), files=[]
    )
    claim = Claim(frozenset({RULE}), Severity.LOW)
    return verifier.verify(patch, claim, FixSpec.of(PersistentWorkersOffFix()))


def _baseline(worker_epochs: list[tuple[int, int | None]]) -> SmokeRun:
    """(epochs begun, batches per epoch) of each loader with workers."""
    signals = {"worker_epochs": worker_epochs, "first_batch_wait_s": 2.5}
    return SmokeRun(ok=True, losses=[1.0], step_times_s=[0.1] * 19, signals=signals)


def test_steps_inside_the_first_epoch_are_not_timed_and_nothing_runs(
    runs: _Runs, tmp_path: Path
) -> None:
    steps = _verify(tmp_path, _baseline([(1, 391), (0, 20)]))  # evaluation loader not begun
    assert runs.calls == 0
    last = steps[-1]
    assert (last.step, last.ok) == ("speed-up", False)
    assert "no loader with workers began a second one (391 batches an epoch)" in last.detail
    assert "its first batch took 2.50 s" in last.detail
    assert [s.step for s in steps[:-1]] == ["patch-applies", "parses", "rule-cleared"]


def test_a_run_that_began_a_second_epoch_times_the_fix(runs: _Runs, tmp_path: Path) -> None:
    steps = _verify(tmp_path, _baseline([(2, 32)]))
    assert runs.calls >= 1
    assert "began a second one" not in steps[-1].detail


def test_a_run_without_the_figure_is_timed_as_before(runs: _Runs, tmp_path: Path) -> None:
    """A checkpoint from before loaders' epochs were counted."""
    old = SmokeRun(ok=True, losses=[1.0], step_times_s=[0.1] * 19)
    _verify(tmp_path, old)
    assert runs.calls >= 1
