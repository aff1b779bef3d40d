"""A verification run must execute the patched lines (issue 13, item 1).

Real sandboxed runs through the probes harness, which records the lines of the patched files
that ran (`--trace-lines`): a fix to a module the script never imports stays unverified with
"the run did not execute the change"; a fix on the lines the script runs passes the step.
"""

from __future__ import annotations

import textwrap
import time

import pytest

from torchdoctor.agent.fixes.codemods.base import EXACT_RTOL, healthy_run
from torchdoctor.agent.fixes.diffs import unified_diff
from torchdoctor.agent.fixes.models import FixKind, Patch
from torchdoctor.agent.fixes.verify import Claim, FixSpec, Verifier
from torchdoctor.agent.harness import Harness
from torchdoctor.agent.models import Severity
from torchdoctor.sandbox.config import get_sandbox

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

TRAIN = textwrap.dedent("""\
    import torch
    from torch import nn

    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(50):
        loss = model(torch.randn(8, 4)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
""")
UNUSED = "def scale(x):\n    return x * 2\n"


def same_trajectory(_before: object, _after: object) -> tuple[bool, str]:
    return True, "not a correctness fix"


@pytest.fixture(scope="module")
def verifier(tmp_path_factory: pytest.TempPathFactory) -> Verifier:
    root = tmp_path_factory.mktemp("reach")
    (root / "train.py").write_text(TRAIN)
    (root / "unused.py").write_text(UNUSED)
    runner = Harness(get_sandbox("local"))
    return Verifier(root, runner, ["python", "train.py"], steps=3, timing_runs=1)


def verify(verifier: Verifier, path: str, before: str, after: str) -> dict[str, tuple[bool, str]]:
    patch = Patch(
        finding_id="TD-test", rule="none", diff=unified_diff(path, before, after), files=[path]
    )
    spec = FixSpec(kind=FixKind.REFACTOR, rtol=None, symptom=same_trajectory)
    steps = verifier.verify(patch, Claim(rules=frozenset(), severity=Severity.LOW), spec)
    return {v.step: (v.ok, v.detail) for v in steps}


def test_a_fix_the_run_never_reaches_is_unverified(verifier: Verifier) -> None:
    steps = verify(verifier, "unused.py", UNUSED, UNUSED.replace("x * 2", "2 * x"))
    assert steps["smoke-run"][0], steps["smoke-run"][1]
    ok, detail = steps["executed-change"]
    assert not ok
    assert detail.startswith("unverified: the run did not execute the change (unused.py:2")
    assert "behaviour" not in steps


def test_a_fix_on_lines_the_run_executes_passes_the_step(verifier: Verifier) -> None:
    after = TRAIN.replace("lr=0.1)", "lr=0.1)  # tuned").replace(
        "    optimizer.zero_grad()\n", "    optimizer.zero_grad(set_to_none=True)\n"
    )
    steps = verify(verifier, "train.py", TRAIN, after)
    ok, detail = steps["executed-change"]
    assert ok, detail
    assert detail == "the run executed every changed block (2) under `python train.py`"


DEFERRED = textwrap.dedent("""\
    import torch
    from torch import nn

    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    total = 0.0
    for step in range(12):
        loss = model(torch.randn(8, 4)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item()
    print(total / 12)
""")


@pytest.fixture(scope="module")
def deferred_verifier(verifier: Verifier) -> Verifier:
    """`python deferred.py`'s verifier: its baseline run made once for both edits below."""
    (verifier.root / "deferred.py").write_text(DEFERRED)
    return Verifier(
        verifier.root, verifier.runner, ["python", "deferred.py"], steps=3, timing_runs=1
    )


def deferred(verifier: Verifier, after_loop: str) -> tuple[bool, str]:
    """The deferred `.item()` edit: the loop keeps a tensor, `after_loop` follows the loop."""
    after = DEFERRED.replace("total += loss.item()", "total += loss.detach()").replace(
        "print(total / 12)", f"{after_loop}\nprint(total / 12)"
    )
    return verify(verifier, "deferred.py", DEFERRED, after)["executed-change"]


def test_a_change_after_the_stopped_loop_runs_in_a_run_left_to_finish(
    deferred_verifier: Verifier,
) -> None:
    # the harness stops the script inside step 3: the conversion after the loop (right below
    # the loop's last line, a block of its own) only runs when the script finishes its 12 steps
    ok, detail = deferred(deferred_verifier, "total = float(total)")
    assert ok, detail
    assert detail == (
        "the run executed every changed block (2) (deferred.py:13 after the loop, in a run "
        "left to finish) under `python deferred.py`"
    )


def test_a_change_after_the_loop_that_breaks_the_end_of_the_run_is_unverified(
    deferred_verifier: Verifier,
) -> None:
    ok, detail = deferred(deferred_verifier, "total = float(total.view(2, -1))")
    assert not ok
    assert detail.startswith(
        "unverified: deferred.py:13 runs after the loop, and the run left to finish under "
        "`python deferred.py` did not end cleanly: "
    )
    assert "RuntimeError" in detail, detail


TWO_LOOPS = DEFERRED.replace(
    "print(total / 12)",
    "for step in range(12):  # fine-tuning, after the run's probed steps\n"
    "    loss = model(torch.randn(8, 4)).mean()\n"
    "    optimizer.zero_grad()\n"
    "    loss.backward()\n"
    "    optimizer.step()\n"
    "    print(loss.item())",
)


def test_a_speed_fix_whose_change_runs_only_after_the_timed_steps_is_not_timed(
    verifier: Verifier,
) -> None:
    """A second training loop's `.item()` fix was timed on the first loop's steps, where it
    changes nothing, and refused as "not faster": right verdict, wrong reason."""
    (verifier.root / "two_loops.py").write_text(TWO_LOOPS)
    two = Verifier(verifier.root, verifier.runner, ["python", "two_loops.py"], steps=3)
    after = TWO_LOOPS.replace("    print(loss.item())", "    print(loss.detach())")
    patch = Patch(
        finding_id="TD-test",
        rule="none",
        diff=unified_diff("two_loops.py", TWO_LOOPS, after),
        files=["two_loops.py"],
    )
    spec = FixSpec(kind=FixKind.PERFORMANCE, rtol=EXACT_RTOL, symptom=healthy_run)
    steps = {
        v.step: (v.ok, v.detail)
        for v in two.verify(patch, Claim(rules=frozenset(), severity=Severity.LOW), spec)
    }
    assert steps["executed-change"][0], steps["executed-change"][1]
    ok, detail = steps["speed-up"]
    assert not ok
    assert detail.startswith("not timed: every changed block (two_loops.py:18) runs only after")


def test_a_run_left_to_finish_ends_by_the_fix_time(deferred_verifier: Verifier) -> None:
    """On an H100 a run left to finish took its whole 280 s budget with 215 s of a 240 s
    --fix-time left: the audit ended 95 s past it. It is now bounded by what the fix time
    leaves, or not made when that is less than the run it follows took."""
    (deferred_verifier.root / "slow_end.py").write_text(
        DEFERRED.replace("import torch\n", "import time\n\nimport torch\n", 1).replace(
            "print(total / 12)", "time.sleep(600)  # a long evaluation after training"
        )
    )
    before = (deferred_verifier.root / "slow_end.py").read_text()
    after = before.replace("total += loss.item()", "total += loss.detach()").replace(
        "time.sleep(600)", "total = float(total)\ntime.sleep(600)"
    )
    slow = Verifier(
        deferred_verifier.root,
        deferred_verifier.runner,
        ["python", "slow_end.py"],
        steps=3,
        timing_runs=1,
    )
    wall = slow.baseline().wall_s or 0.0
    # room for the fixed version's run of 3 steps (about the baseline's), then 15 s more than
    # a run left to finish needs to start: it starts, and the fix time's end stops it
    allowed = 2 * wall + 20 + 15
    started = time.monotonic()
    slow.deadline = started + allowed
    ok, detail = verify(slow, "slow_end.py", before, after)["executed-change"]
    assert not ok
    assert detail.startswith(
        "unverified: slow_end.py:15 runs after the loop, and the run left to finish under "
        "`python slow_end.py` did not end cleanly: time-budget: stopped after "
    ), detail
    assert "(bounded by the fix time left, " in detail, detail
    assert time.monotonic() - started < allowed + 2
    tight = Verifier(
        deferred_verifier.root,
        deferred_verifier.runner,
        ["python", "slow_end.py"],
        steps=3,
        baseline=slow.baseline(),
        known_runs=slow.patched_runs,
        deadline=time.monotonic() + 5,
    )
    ok, detail = verify(tight, "slow_end.py", before, after)["executed-change"]
    assert not ok
    assert detail.startswith(
        "unverified: slow_end.py:15 runs after the loop, and a run left to finish under "
        "`python slow_end.py` would end past the fix time ("
    )
    assert detail.endswith(" s left); raise --fix-time to verify it"), detail
