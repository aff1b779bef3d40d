"""An LLM's patch is verified exactly like a codemod's: by applying it to a copy and running.

No model is involved here: the patch is the kind of unified diff an LLM finding carries
(`Fix(origin="llm")`), so the test pins the audit's handling of it, whatever produced it.
"""

from __future__ import annotations

from pathlib import Path

from tests.e2e.test_fix_apply_undo import TRAIN
from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.fixes.diffs import unified_diff
from torchdoctor.agent.fixes.models import FixKind
from torchdoctor.agent.fixing import FixBench, propose, verify_record
from torchdoctor.agent.harness import Harness
from torchdoctor.agent.models import Evidence, Finding, Fix, Severity, Status
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


def _verify(bench: FixBench, finding: Finding) -> Finding:
    (record,) = propose(bench.root, [finding], finding.phase)
    assert record.origin == "llm" and record.kind is FixKind.CORRECTNESS  # point 4: phase 2
    return verify_record(bench, {}, None, finding, record).finding


def test_an_llm_patch_is_verified_by_running_it_and_a_broken_one_is_not(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(TRAIN)
    bench = FixBench(
        root=tmp_path,
        runner=Harness(get_sandbox("local")),
        run_command=["python", "train.py"],
        steps=4,
        config=EngineConfig(),
        paths=["train.py"],
    )
    good = TRAIN.replace(
        "    loss.backward()\n", "    optimizer.zero_grad()\n    loss.backward()\n"
    )
    checked = _verify(bench, _llm_finding(TRAIN, good))
    assert checked.fix is not None and checked.fix.origin == "llm"
    assert checked.fix.verified, checked.fix.verification
    assert checked.status == Status.VERIFIED
    broken = TRAIN.replace("    loss.backward()\n", "    loss.backward(\n")
    rejected = _verify(bench, _llm_finding(TRAIN, broken))
    assert rejected.fix is not None and not rejected.fix.verified
    assert rejected.status == Status.OPEN
    assert any(not v.ok for v in rejected.fix.verification)
    assert (tmp_path / "train.py").read_text() == TRAIN, "verification never touches the files"
