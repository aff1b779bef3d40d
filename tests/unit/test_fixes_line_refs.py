"""Verification details name lines as the user's file and the fix's diff number them.

Shapes from the audits of a seq2seq tutorial and of makemore: a seed fix inserts four lines at
the top, and its run's error was reported at `train.py:74` where the user's file has it at 69;
a later phase verifying on the working copy (an earlier fix had removed four lines) reported
"makemore.py:655 never ran" for a change its diff shows at line 659."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchdoctor.agent.fixes import verify
from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.diffs import renumber_refs, unified_diff
from torchdoctor.agent.fixes.models import Patch, SmokeRun
from torchdoctor.agent.fixes.verify import Claim, FixSpec, Verifier
from torchdoctor.agent.models import Severity

OLD = "".join(f"line{n}\n" for n in range(1, 11))


def test_lines_are_renumbered_from_the_new_text_to_the_old() -> None:
    new = "seed1\nseed2\nseed3\n" + OLD.replace("line7\n", "line7 changed\n")
    files = {"train.py": (new, OLD)}

    assert renumber_refs("error at train.py:12, see train.py:4", files) == (
        "error at train.py:9, see train.py:1"
    )
    # a line the change wrote: where the change sits in the old text
    assert renumber_refs("train.py:10 never ran", files) == "train.py:7 never ran"
    # inserted lines are counted from where the insertion starts, as the diff's + side shows
    # them (the second of three lines inserted above line 1 is line 2, not line 1 again)
    assert renumber_refs("train.py:2", files) == "train.py:2"
    # a line inserted below a changed one keeps its own number: below the old line 6 and the
    # changed line 7 comes line 8, even though the old text has a line 8 of its own
    grown = OLD.replace("line7\n", "line7 changed\nafter7\n")
    assert renumber_refs("train.py:8 after the loop", {"train.py": (grown, OLD)}) == (
        "train.py:8 after the loop"
    )
    # other files, and names that only end like the file, are left alone
    assert renumber_refs("model.py:12 and mytrain.py:12", files) == "model.py:12 and mytrain.py:12"


SCRIPT = """import torch
import torch.nn as nn

model = nn.Linear(2, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(3):
    out = model(torch.randn(4, 2))
    loss = nn.functional.mse_loss(out, torch.randn(4))
    opt.zero_grad()
    loss.backward()
    opt.step()
"""
SEEDED = SCRIPT.replace(
    "import torch.nn as nn\n", "import torch.nn as nn\n\ntorch.manual_seed(0)\n\n"
)
LOSS_LINE = 8  # where the user's file computes the loss


def test_a_failed_fixed_run_names_the_error_line_of_the_users_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "train.py").write_text(SCRIPT, encoding="utf-8")
    crashed = SmokeRun(
        ok=False,
        detail=f"script-error: shape mismatch (ValueError at train.py:{LOSS_LINE + 3})",
        error_at=("train.py", LOSS_LINE + 3),
    )
    monkeypatch.setattr(verify, "smoke_run", lambda *_a, **_k: crashed)
    baseline = crashed.model_copy(
        update={
            "detail": f"script-error: shape mismatch (ValueError at train.py:{LOSS_LINE})",
            "error_at": ("train.py", LOSS_LINE),
        }
    )
    verifier = Verifier(root, object(), ["python", "train.py"], baseline=baseline)  # type: ignore[arg-type]
    codemod = codemod_for("no-torch-seed")
    assert codemod is not None

    steps = verifier.verify(
        Patch(
            finding_id="TD-1",
            rule="no-torch-seed",
            diff=unified_diff("train.py", SCRIPT, SEEDED),
            files=["train.py"],
        ),
        Claim(frozenset({"no-torch-seed"}), Severity.MEDIUM),
        FixSpec.of(codemod),
    )

    smoke = next(s for s in steps if s.step == "smoke-run")
    assert not smoke.ok
    assert f"train.py:{LOSS_LINE})" in smoke.detail  # not the patched copy's line 11


def test_checks_made_on_the_working_copy_name_the_users_lines(tmp_path: Path) -> None:
    from torchdoctor.agent.fixing import _on_user_files
    from torchdoctor.agent.models import Verification

    (tmp_path / "train.py").write_text(SCRIPT, encoding="utf-8")
    # an earlier phase's fix removed the two import lines from the working copy
    copy = SCRIPT.replace("import torch\nimport torch.nn as nn\n", "")
    check = Verification(
        step="executed-change", ok=False, detail=f"train.py:{LOSS_LINE - 2} never ran"
    )

    (renumbered,) = _on_user_files(tmp_path, {"train.py": copy}, [check])

    assert renumbered.detail == f"train.py:{LOSS_LINE} never ran"
