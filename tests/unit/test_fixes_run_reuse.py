"""One audit never makes the same seeded smoke run twice: the fixes adopted so far plus one
new fix are the code that fix was verified on, so their combined check reuses that run, and the
next phase's baseline is the run of the code it adopted (each sandbox run imports torch afresh:
seconds of CPU each)."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.fixes import verify
from torchdoctor.agent.fixes.codemods.base import EXACT_RTOL, healthy_run
from torchdoctor.agent.fixes.models import FixKind, SmokeRun
from torchdoctor.agent.fixes.verify import FixSpec, Verifier
from torchdoctor.agent.fixing import FixBench
from torchdoctor.agent.harness import Harness

SPEC = FixSpec(kind=FixKind.CORRECTNESS, rtol=EXACT_RTOL, symptom=healthy_run)
EARLIER = "x = 2\n"  # the working copy: an earlier phase's adopted fix
BOTH = "x = 3\n"  # the new fix on top of it


class _Runs:
    """Stands in for the sandboxed smoke runs: counts them, each a distinct run."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *_args: object, **_options: object) -> SmokeRun:
        self.calls += 1
        return SmokeRun(ok=True, losses=[float(self.calls)])


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> _Runs:
    runner = _Runs()
    monkeypatch.setattr(verify, "smoke_run", runner)
    return runner


def _tree(root: Path, text: str) -> Path:
    root.mkdir()
    (root / "train.py").write_text(text)
    return root


def _verifier(
    root: Path,
    copy_texts: dict[str, str] | None = None,
    known_runs: dict[str, SmokeRun] | None = None,
) -> Verifier:
    harness = cast(Harness, object())  # never called: smoke_run is replaced
    return Verifier(
        root,
        harness,
        ["python", "train.py"],
        steps=3,
        copy_texts=copy_texts,
        known_runs=known_runs,
    )


def test_the_combined_check_of_the_code_a_fix_ran_on_reuses_its_run(
    runs: _Runs, tmp_path: Path
) -> None:
    on_copy = _verifier(tmp_path / "copy", copy_texts={"train.py": EARLIER})
    first = on_copy._smoke_run(_tree(tmp_path / "patched", BOTH), ["train.py"], SPEC)
    combined = _verifier(tmp_path / "original", known_runs=on_copy.patched_runs)
    again = combined._smoke_run(_tree(tmp_path / "merged", BOTH), ["train.py"], SPEC)
    assert runs.calls == 1 and again == first


def test_other_code_or_another_call_runs_again(runs: _Runs, tmp_path: Path) -> None:
    on_copy = _verifier(tmp_path / "copy", copy_texts={"train.py": EARLIER})
    on_copy._smoke_run(_tree(tmp_path / "patched", BOTH), ["train.py"], SPEC)
    known = on_copy.patched_runs
    _verifier(tmp_path / "a", known_runs=known)._smoke_run(
        _tree(tmp_path / "other", EARLIER), ["train.py"], SPEC
    )
    more_memory = FixSpec(kind=SPEC.kind, rtol=SPEC.rtol, symptom=healthy_run, extra_memory_mb=64)
    _verifier(tmp_path / "b", known_runs=known)._smoke_run(
        _tree(tmp_path / "same", BOTH), ["train.py"], more_memory
    )
    longer = _verifier(tmp_path / "c", known_runs=known)
    longer.steps = 4
    longer._smoke_run(_tree(tmp_path / "same-longer", BOTH), ["train.py"], SPEC)
    assert runs.calls == 4


def test_the_combined_check_of_a_seeding_fix_reuses_its_unseeded_pair(
    runs: _Runs, tmp_path: Path
) -> None:
    on_copy = _verifier(tmp_path / "copy", copy_texts={"train.py": EARLIER})
    patched = _tree(tmp_path / "patched", BOTH)
    seeded = on_copy._smoke_run(patched, ["train.py"], SPEC)
    first = on_copy._with_unseeded_repeat(patched, ["train.py"], SPEC, seeded)
    assert runs.calls == 3 and first.losses == [2.0] and first.signals.repeat_losses == [3.0]
    combined = _verifier(tmp_path / "original", known_runs=on_copy.patched_runs)
    merged = _tree(tmp_path / "merged", BOTH)
    again = combined._with_unseeded_repeat(
        merged, ["train.py"], SPEC, combined._smoke_run(merged, ["train.py"], SPEC)
    )
    assert runs.calls == 3 and again == first
    other = _verifier(tmp_path / "other", known_runs=on_copy.patched_runs)
    moved = _tree(tmp_path / "moved", EARLIER)
    other._with_unseeded_repeat(moved, ["train.py"], SPEC, seeded)
    assert runs.calls == 5, "other code repeats afresh"


def _bench(root: Path, known_runs: dict[str, SmokeRun], trace: list[str]) -> FixBench:
    harness = cast(Harness, object())  # never called: smoke_run is replaced
    return FixBench(
        root=root,
        runner=harness,
        run_command=["python", "train.py"],
        steps=3,
        config=EngineConfig(),
        paths=["train.py"],
        known_runs=known_runs,
        trace=trace,
    )


def test_the_next_phases_baseline_is_the_run_of_the_fix_it_adopted(
    runs: _Runs, tmp_path: Path
) -> None:
    on_original = _verifier(_tree(tmp_path / "original", "x = 1\n"))
    made = on_original._smoke_run(_tree(tmp_path / "patched", EARLIER), ["train.py"], SPEC)
    bench = _bench(tmp_path / "original", on_original.patched_runs, ["train.py"])
    later = bench.verifier(tmp_path / "copy", bench.known_baseline({"train.py": EARLIER}))
    assert later.baseline() == made and runs.calls == 1
    # other code, or the same code with other files traced, is run afresh
    assert bench.known_baseline({"train.py": BOTH}) is None
    untraced = _bench(tmp_path / "original", on_original.patched_runs, [])
    assert untraced.known_baseline({"train.py": EARLIER}) is None
    assert bench.known_baseline({}) is None  # the original's baseline is its own run
