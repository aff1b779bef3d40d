"""vocabulary-in-set-order's fix verified by its symptom in real sandboxed runs: the original
script numbers its words in a set's order, so its seeded losses change with PYTHONHASHSEED (as
two launches would draw it); the fixed one records the same losses under both seeds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.fix_findings import findings_of
from torchdoctor.agent.fixes.pipeline import propose_and_verify
from torchdoctor.agent.fixes.smoke import smoke_run
from torchdoctor.agent.harness import Harness
from torchdoctor.agent.models import Status
from torchdoctor.sandbox.config import get_sandbox

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).parents[1] / "fixtures" / "fixes" / "vocabulary-in-set-order" / "before.py"
RUN = ["python", "train.py"]
STEPS = 6


def test_the_vocabulary_fix_makes_the_losses_independent_of_the_hash_seed(
    tmp_path: Path,
) -> None:
    shutil.copy(SCRIPT, tmp_path / "train.py")
    harness = Harness(get_sandbox("local"))
    under = [smoke_run(harness, tmp_path, RUN, STEPS, hash_seed=seed) for seed in (0, 1)]
    assert all(run.ok and len(run.losses) == STEPS for run in under)
    assert under[0].losses != under[1].losses  # the symptom: the launch's hash seed decides

    [finding] = [f for f in findings_of(tmp_path) if f.rule == "vocabulary-in-set-order"]
    [verified] = propose_and_verify(
        tmp_path,
        [finding],
        get_sandbox("local"),
        run_command=RUN,
        steps=STEPS,
        timing_runs=1,
        baseline=under[0],  # the same seeded run (PYTHONHASHSEED 0) the verifier would make
    )
    assert verified.fix is not None and verified.status is Status.VERIFIED
    assert "sorted(set(word_list))" in verified.fix.diff
    behaviour = next(v for v in verified.fix.verification if v.step == "behaviour")
    assert behaviour.ok
    assert f"the same {STEPS} losses under PYTHONHASHSEED 0 and 1" in behaviour.detail
