"""An LLM's patch is verified exactly like a codemod's: by applying it to a copy and running.

No model is involved here: the patch is the kind of unified diff an LLM finding carries
(`Fix(origin="llm")`), so the test pins the audit's handling of it, whatever produced it.
"""

from __future__ import annotations

from pathlib import Path

from tests.e2e.test_fix_apply_undo import TRAIN
from torchdoctor.agent.audit import verify_llm_fix
from torchdoctor.agent.fixes.diffs import unified_diff
from torchdoctor.agent.models import Evidence, Finding, Fix, Severity, Status
from torchdoctor.agent.workspace import load_workspace
from torchdoctor.sandbox.config import get_sandbox


def _llm_finding(before: str, after: str) -> Finding:
    return Finding(
        id="TD-0123456789ab",
        rule="llm-gradients-accumulate",
        checkpoint=4,
        phase=2,
        severity=Severity.HIGH,
        title="gradients accumulate across steps",
        file="train.py",
        line=11,
        end_line=11,
        evidence=[Evidence(source="llm:stub", kind="llm", message="no zero_grad in the loop")],
        fix=Fix(diff=unified_diff("train.py", before, after), origin="llm"),
    )


def test_an_llm_patch_is_verified_by_running_it_and_a_broken_one_is_not(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(TRAIN)
    workspace = load_workspace(tmp_path)
    sandbox = get_sandbox("local")
    command = ["python", "train.py"]
    good = TRAIN.replace(
        "    loss.backward()\n", "    optimizer.zero_grad()\n    loss.backward()\n"
    )
    checked = verify_llm_fix(workspace, _llm_finding(TRAIN, good), sandbox, command, 4, False)
    assert checked.fix is not None and checked.fix.origin == "llm"
    assert checked.fix.verified, checked.fix.verification
    assert checked.status == Status.VERIFIED
    broken = TRAIN.replace("    loss.backward()\n", "    loss.backward(\n")
    rejected = verify_llm_fix(workspace, _llm_finding(TRAIN, broken), sandbox, command, 4, False)
    assert rejected.fix is not None and not rejected.fix.verified
    assert rejected.status == Status.OPEN
    assert any(not v.ok for v in rejected.fix.verification)
    assert (tmp_path / "train.py").read_text() == TRAIN, "verification never touches the files"
