"""A crash fix is judged on the crash it targets, not on the next one the run reaches.

Shape from a VAE tutorial written for PyTorch 0.3: the loop reads its 0-dim loss with
`.data[0]` twice (a running total, then a log line). Each read is a finding with its own fix;
with one fixed, the run gets past it and dies on the other, and each fix alone was rejected
with "the fixed script failed"."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from torchdoctor.agent.fixes import verify
from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.diffs import unified_diff
from torchdoctor.agent.fixes.models import FixKind, Patch, SmokeRun
from torchdoctor.agent.fixes.verify import Claim, FixSpec, Verifier
from torchdoctor.agent.models import Severity, Verification

SCRIPT = """import torch
import torch.nn as nn

criterion = nn.MSELoss()
model = nn.Linear(2, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
total = 0.0
for step in range(3):
    loss = criterion(model(torch.randn(4, 2)), torch.randn(4, 1))
    opt.zero_grad()
    loss.backward()
    opt.step()
    total += loss.data[0]
    print(step, loss.data[0])
"""
TOTAL, LOG = 13, 14
ERROR = "script-error: IndexError: invalid index of a 0-dim tensor"


def _run(line: int) -> SmokeRun:
    return SmokeRun(
        ok=False,
        detail=f"{ERROR} (IndexError at train.py:{line})",
        error_at=("train.py", line),
        executed_lines={"train.py": list(range(1, line + 1))},
    )


def _steps(
    tmp_path: Path, fixed: str, baseline: SmokeRun, kind: FixKind | None = None
) -> list[Verification]:
    """The verification of the fix `fixed` of SCRIPT against the original's run `baseline`
    (the patched run is whatever `verify.smoke_run` is made to return), as its codemod's
    kind of fix or as `kind`."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "train.py").write_text(SCRIPT, encoding="utf-8")
    verifier = Verifier(root, object(), ["python", "train.py"], baseline=baseline)  # type: ignore[arg-type]
    patch = Patch(
        finding_id="TD-1",
        rule="scalar-loss-indexed",
        diff=unified_diff("train.py", SCRIPT, fixed),
        files=["train.py"],
    )
    codemod = codemod_for("scalar-loss-indexed")
    assert codemod is not None
    spec = FixSpec.of(codemod)
    return verifier.verify(
        patch,
        Claim(frozenset({"scalar-loss-indexed"}), Severity.HIGH),
        spec if kind is None else replace(spec, kind=kind),
    )


def _verify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fixed: str, after: SmokeRun
) -> dict[str, Any]:
    monkeypatch.setattr(verify, "smoke_run", lambda *_a, **_k: after)
    return {s.step: s for s in _steps(tmp_path, fixed, _run(TOTAL))}


def test_a_fix_that_gets_the_run_past_its_crash_is_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fixed = SCRIPT.replace("total += loss.data[0]", "total += loss.item()")

    steps = _verify(tmp_path, monkeypatch, fixed, _run(LOG))

    assert all(s.ok for s in steps.values()), steps
    moved = steps["crash-moved-on"]
    assert f"error at train.py:{TOTAL} is gone" in moved.detail
    assert f"train.py:{LOG}" in moved.detail  # the next problem is named
    # not a completed run: the script-error finding is not resolved by this fix alone
    assert "smoke-run" not in steps
    assert steps["executed-change"].ok and steps["behaviour"].ok


def test_a_fix_whose_run_still_fails_where_the_original_did_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the log line fixed first: the run still dies on the running total, as before
    fixed = SCRIPT.replace("print(step, loss.data[0])", "print(step, loss.item())")

    steps = _verify(tmp_path, monkeypatch, fixed, _run(TOTAL))

    assert not steps["smoke-run"].ok
    assert "fails where the original fails" in steps["smoke-run"].detail
    assert "behaviour" not in steps


def test_a_fix_above_the_original_failure_is_not_blamed_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fix that adds a line above the original's failure (a seed after the imports of
    torchdiffeq's demo, run where scipy is missing; here the log line fixed with one more
    line): the fixed run fails as the original did, a line lower in the patched copy. It is
    refused, saying that the failure is the original's, not the fix's."""
    fixed = SCRIPT.replace("import torch.nn as nn\n", "import torch.nn as nn\nprint()\n").replace(
        "print(step, loss.data[0])", "print(step, loss.item())"
    )

    steps = _verify(tmp_path, monkeypatch, fixed, _run(TOTAL + 1))

    smoke = steps["smoke-run"]
    assert not smoke.ok
    assert smoke.detail.startswith(f"the fixed script fails where the original fails ({ERROR}")
    assert f"train.py:{TOTAL})" in smoke.detail


def test_a_crash_moved_by_a_fix_off_the_crashing_line_proves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a change elsewhere (here, a line before the loop) with the run failing further on is
    # not a fix of the original's error
    fixed = SCRIPT.replace("total += loss.data[0]", "total += loss.item()").replace(
        "total = 0.0", "total = 0"
    )
    after = SmokeRun(ok=False, detail="script-error: boom", error_at=("train.py", 9))
    monkeypatch.setattr(verify, "smoke_run", lambda *_a, **_k: after)

    steps = _steps(tmp_path, fixed, _run(LOG))

    smoke = next(s for s in steps if s.step == "smoke-run")
    assert not smoke.ok and "the fixed script failed" in smoke.detail


def test_a_fix_of_another_kind_is_not_run_against_a_failing_original(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a speed or precision fix is judged against the original's run: with the original
    # failing, there is nothing to judge it against, and running the fixed copy would cost a
    # whole run budget per proposed fix
    fixed = SCRIPT.replace("total += loss.data[0]", "total += loss.item()")
    runs: list[object] = []
    monkeypatch.setattr(verify, "smoke_run", lambda *a, **_k: runs.append(a) or _run(LOG))

    steps = _steps(tmp_path, fixed, _run(TOTAL), FixKind.PERFORMANCE)

    assert runs == []
    assert [s.step for s in steps] == ["patch-applies", "parses", "rule-cleared", "smoke-run"]
    assert not steps[-1].ok
    assert "not run: the original run failed" in steps[-1].detail
    assert f"train.py:{TOTAL}" in steps[-1].detail


def test_a_failed_run_says_where_its_error_was_raised() -> None:
    from tests.unit.test_fixes_smoke import document
    from torchdoctor.agent.fixes.smoke import smoke_run_from_evidence

    crashed = document(
        outcome={
            "kind": "script-error",
            "detail": "invalid index of a 0-dim tensor",
            "error_type": "IndexError",
            "file": "train.py",
            "line": TOTAL,
        }
    )
    assert smoke_run_from_evidence(crashed).error_at == ("train.py", TOTAL)
    assert smoke_run_from_evidence(document()).error_at is None  # a run that completed


def test_a_fix_that_still_fails_on_its_own_rewritten_line_is_not_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the fix inserts two lines above the loop and rewrites the read into one that raises too:
    # the run fails at line TOTAL + 2 of the fixed file, the fix's own line, not a
    # further problem
    fixed = SCRIPT.replace("total = 0.0\n", "total = 0.0\nscale = 1.0\nbias = 0.0\n").replace(
        "total += loss.data[0]", "total += loss.detach().numpy()[0] * scale"
    )

    steps = _verify(tmp_path, monkeypatch, fixed, _run(TOTAL + 2))

    assert not steps["smoke-run"].ok
    assert "behaviour" not in steps


def test_a_fix_whose_run_only_got_past_the_crash_does_not_resolve_the_script_error() -> None:
    from torchdoctor.agent.fixing import resolved_run_failures
    from torchdoctor.agent.models import Evidence, Finding, Fix, Verification

    def finding(rule: str, steps: list[Verification]) -> Finding:
        return Finding(
            id=f"TD-{rule}",
            rule=rule,
            checkpoint=1,
            phase=1,
            severity=Severity.HIGH,
            title=rule,
            file="train.py",
            line=TOTAL,
            end_line=TOTAL,
            evidence=[Evidence(source="torchdoctor-static", kind="static", message="m")],
            fix=Fix(diff="", verified=bool(steps), verification=steps) if steps else None,
        )

    moved = Verification(step="crash-moved-on", ok=True, detail="gone")
    crash_fix = finding("scalar-loss-indexed", [moved])
    script_error = finding("probe-script-error", [])

    assert resolved_run_failures([script_error], [crash_fix], _run(TOTAL)) == []


def test_a_script_in_a_folder_has_its_error_placed_from_the_workspace() -> None:
    """Shape from an educational transformer package (held out): `experiments/generate.py`
    failed at its line 1, which the harness names from the script's folder (`generate.py`);
    the fix's patches name it from the workspace, so a crash fix of that script was never
    seen to move its crash on, and the detail named a `generate.py` at the top."""
    from tests.unit.test_fixes_smoke import document
    from torchdoctor.agent.fixes.smoke import smoke_run_from_evidence

    crashed = document(
        outcome={
            "kind": "script-error",
            "detail": "invalid index of a 0-dim tensor",
            "error_type": "IndexError",
            "file": "train.py",
            "line": TOTAL,
        }
    )
    run = smoke_run_from_evidence(crashed, script="experiments/train.py")
    assert run.error_at == ("experiments/train.py", TOTAL)
    assert run.detail.endswith(f"(IndexError at experiments/train.py:{TOTAL})")
    assert smoke_run_from_evidence(crashed, script="train.py").error_at == ("train.py", TOTAL)


def test_changes_after_the_loop_are_named_in_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two blocks after the loop (an eval/restore pair around a sampling function, held-out
    former) read "generate.py:106, generate.py:122 runs after the loop"."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "train.py").write_text(SCRIPT, encoding="utf-8")
    fixed = SCRIPT.replace("total = 0.0\n", "total = 0.0\nstart = 0\n") + "done = 1\n"
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "train.py").write_text(fixed, encoding="utf-8")
    whole = SmokeRun(ok=False, detail="script-error: boom")
    monkeypatch.setattr(verify, "smoke_run", lambda *_a, **_k: whole)
    verifier = Verifier(root, object(), ["python", "train.py"], baseline=_run(TOTAL))  # type: ignore[arg-type]
    after = SmokeRun(ok=True, stopped_in_loop=True, executed_lines={"train.py": [1, 2]})
    codemod = codemod_for("scalar-loss-indexed")
    assert codemod is not None

    step = verifier._executed(copy, ["train.py"], after, FixSpec.of(codemod))

    assert not step.ok and " run after the loop, and the run left to finish" in step.detail


def test_a_fix_whose_run_completes_where_the_original_failed_repairs_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the phase's other fixes are verified on top of (kuangliu/pytorch-cifar: the
    stty fix lets the run start; its `torch.load` fix was refused for want of a working
    original): a fix whose run completes, or gets past the error, but not one that fails as
    the original did, nor a fix of a script that ran."""
    both = SCRIPT.replace("loss.data[0]", "loss.item()")
    for folder in ("done", "moved", "same"):
        (tmp_path / folder).mkdir()
    steps = _verify(
        tmp_path / "done",
        monkeypatch,
        both,
        SmokeRun(ok=True, losses=[1.0, 0.5], executed_lines={"train.py": list(range(1, 15))}),
    )
    assert verify.repairs_the_run(list(steps.values()))
    moved = _verify(
        tmp_path / "moved",
        monkeypatch,
        SCRIPT.replace("total += loss.data[0]", "total += loss.item()"),
        _run(LOG),
    )
    assert verify.repairs_the_run(list(moved.values()))
    same = _verify(tmp_path / "same", monkeypatch, both, _run(TOTAL))
    assert not verify.repairs_the_run(list(same.values()))
    healthy = [Verification(step="behaviour", ok=True, detail="loss trajectory: within 1e-05")]
    assert not verify.repairs_the_run(healthy)
