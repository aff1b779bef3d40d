"""The static half of verification (no sandbox): applies, parses, rule cleared, no new finding."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from torchdoctor.agent.fixes.diffs import unified_diff
from torchdoctor.agent.fixes.models import FixKind, Patch
from torchdoctor.agent.fixes.pipeline import verdict_line, verify_patch
from torchdoctor.agent.fixes.verify import NO_RUN
from torchdoctor.agent.models import Evidence, Finding, Severity, Status, Verification

SOURCE = """import torch
from torch import nn

model = nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(3):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    loss.backward()
    optimizer.step()
"""
FINDING = Finding(
    id="TD-zg",
    rule="zero-grad-missing",
    checkpoint=4,
    phase=2,
    severity=Severity.HIGH,
    title="t",
    file="train.py",
    line=6,
    end_line=6,
    evidence=[Evidence(source="test", message="m")],
)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    (tmp_path / "train.py").write_text(SOURCE)
    return tmp_path


def llm_patch(new_source: str) -> Patch:
    diff = unified_diff("train.py", SOURCE, new_source)
    return Patch(
        finding_id="TD-zg", rule="zero-grad-missing", origin="llm", diff=diff, files=["train.py"]
    )


def steps(finding: Finding) -> dict[str, tuple[bool, str]]:
    assert finding.fix is not None
    return {v.step: (v.ok, v.detail) for v in finding.fix.verification}


def test_a_good_llm_patch_passes_the_static_steps_but_needs_a_run(workspace: Path) -> None:
    fixed = SOURCE.replace("    loss = ", "    optimizer.zero_grad()\n    loss = ")
    out = verify_patch(workspace, FINDING, llm_patch(fixed), FixKind.CORRECTNESS, None)
    assert out.fix is not None and out.fix.origin == "llm" and not out.fix.verified
    assert out.status is Status.OPEN
    assert steps(out)["rule-cleared"][0]
    assert steps(out)["smoke-run"] == (False, NO_RUN)
    assert (workspace / "train.py").read_text() == SOURCE


def test_a_patch_that_does_not_parse_is_rejected(workspace: Path) -> None:
    broken = SOURCE.replace("for step in range(3):", "for step in range(3)")
    out = verify_patch(workspace, FINDING, llm_patch(broken), FixKind.CORRECTNESS, None)
    assert steps(out)["parses"][0] is False
    assert "smoke-run" not in steps(out)


def test_a_patch_that_leaves_the_rule_firing_is_rejected(workspace: Path) -> None:
    cosmetic = SOURCE.replace("for step in range(3):", "# three steps\nfor step in range(3):")
    out = verify_patch(workspace, FINDING, llm_patch(cosmetic), FixKind.CORRECTNESS, None)
    assert steps(out)["rule-cleared"] == (False, "still fires: zero-grad-missing")


def test_a_patch_that_adds_a_worse_finding_is_rejected(workspace: Path) -> None:
    worse = SOURCE.replace(
        "    loss = model(torch.randn(8, 4)).pow(2).mean()",
        "    optimizer.zero_grad()\n"
        "    y = torch.randint(0, 1, (8,))\n"
        "    loss = nn.functional.cross_entropy(torch.softmax(model(torch.randn(8, 4)), 1), y)",
    )
    out = verify_patch(workspace, FINDING, llm_patch(worse), FixKind.CORRECTNESS, None)
    ok, detail = steps(out)["rule-cleared"]
    assert not ok and "new findings: double-softmax" in detail


def test_a_finding_on_the_edited_line_is_not_new(tmp_path: Path) -> None:
    """dataloader-sync rewrites the DataLoader call, where pin-memory-off already fired: the
    same finding on an edited line (seen on the H200 ResNet benchmark), not a new one."""
    source = (
        "import torch\n"
        "from torch.utils.data import DataLoader, TensorDataset\n\n"
        "def main():\n"
        "    model = torch.nn.Linear(4, 1).cuda()\n"
        "    opt = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "    loader = DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=8)\n"
        "    for (x,) in loader:\n"
        "        opt.zero_grad()\n"
        "        model(x.cuda()).sum().backward()\n"
        "        opt.step()\n\n\n"
        'if __name__ == "__main__":\n'
        "    main()\n"
    )
    (tmp_path / "train.py").write_text(source)
    fixed = source.replace("batch_size=8)", "batch_size=8, num_workers=2)")
    finding = FINDING.model_copy(
        update={"rule": "dataloader-sync", "severity": Severity.LOW, "line": 7, "end_line": 7}
    )
    patch = Patch(
        finding_id="TD-zg",
        rule="dataloader-sync",
        diff=unified_diff("train.py", source, fixed),
        files=["train.py"],
    )
    out = verify_patch(tmp_path, finding, patch, FixKind.PERFORMANCE, None)
    assert steps(out)["rule-cleared"][0], steps(out)["rule-cleared"][1]


def test_the_progress_line_of_a_verified_performance_fix_carries_its_measured_gain() -> None:
    gain = "median step 194.2 ms -> 22.1 ms (+88.6%, 95% CI [+88.1%, +89.0%])"
    verified = [
        Verification(step="smoke", ok=True),
        Verification(step="speed-up", ok=True, detail=gain),
    ]
    assert verdict_line(verified) == f"verified ({gain})"
    assert verdict_line([Verification(step="smoke", ok=True)]) == "verified"
    failed = [
        Verification(step="smoke", ok=True),
        Verification(step="speed-up", ok=False, detail="noise"),
    ]
    assert verdict_line(failed) == "not verified at speed-up: noise"


def test_a_fix_no_planned_run_reaches_says_so_rather_than_asking_for_a_run(
    workspace: Path,
) -> None:
    """Shape from a folder of tutorial scripts audited with `--run` of one of them: a fix to
    another script has no run that executes it, and its smoke-run step said 'pass --run' to a
    user who had passed one."""
    from torchdoctor.agent.checks.base import EngineConfig
    from torchdoctor.agent.fixes.codemods.base import healthy_run
    from torchdoctor.agent.fixes.verify import NOT_REACHED, Claim, FixSpec
    from torchdoctor.agent.fixing import FixBench

    reach = Verification(step="run-reaches", ok=False, detail="no planned run imports train.py")
    bench = FixBench(workspace, None, None, 20, EngineConfig(), ["train.py"], reach=reach)
    fixed = SOURCE.replace("    loss = ", "    optimizer.zero_grad()\n    loss = ")
    spec = FixSpec(kind=FixKind.CORRECTNESS, rtol=None, symptom=healthy_run)
    claim = Claim(frozenset({"zero-grad-missing"}), Severity.HIGH)

    checks = bench.verifier(workspace, None).verify(llm_patch(fixed), claim, spec)

    assert (checks[-1].step, checks[-1].ok, checks[-1].detail) == ("smoke-run", False, NOT_REACHED)
    unplanned = replace(bench, reach=None).verifier(workspace, None)
    assert unplanned.verify(llm_patch(fixed), claim, spec)[-1].detail == NO_RUN
