"""Coverage tells the truth (issue 13, item 6): an item names only the tools and probes that ran
on this target, "pass" needs something checked and found sound, and a reason never claims what
the code does not show."""

from __future__ import annotations

from torchdoctor.agent.audit import AuditOptions, run_audit
from torchdoctor.agent.models import Evidence
from torchdoctor.agent.reasoning.base import PointRequest
from torchdoctor.agent.reasoning.offline import OfflineReasoner

TRAIN = """\
import torch
from torch import nn

model = nn.Linear(4, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for x in torch.randn(10, 8, 4):
    optimizer.zero_grad()
    loss = model(x).mean()
    loss.backward()
    optimizer.step()
"""


def test_a_tool_that_did_not_run_is_not_named_as_evidence() -> None:
    not_run = Evidence(
        source="mypy",
        kind="linter",
        message="mypy: mypy is opt-in (slower) and was not requested",
        data={"items": ["1.1"], "verdict": "not-checked"},
    )
    ran = Evidence(
        source="ruff", kind="linter", message="ruff: checked 1 file", data={"items": ["1.1"]}
    )
    result = OfflineReasoner().reason(PointRequest(point=1, evidence=[not_run, ran]))
    entry = next(c for c in result.coverage if c.item == "1.1")
    assert "mypy" not in entry.how and "ruff" in entry.how


def test_no_test_file_leaves_testing_items_unchecked_never_passed() -> None:
    request = PointRequest(point=5, rules_run=["no-ml-tests"], applicable_rules=[])
    verdicts = {c.item: c for c in OfflineReasoner().reason(request).coverage}
    for item in ("5.2", "5.3"):
        assert verdicts[item].verdict == "not-checked"
        assert "no test file" in verdicts[item].reason
    with_tests = PointRequest(point=5, rules_run=["no-ml-tests"], applicable_rules=["no-ml-tests"])
    assert {c.item: c.verdict for c in OfflineReasoner().reason(with_tests).coverage}["5.2"] == (
        "pass"
    )


def test_a_script_with_a_training_loop_is_never_said_to_have_none(tmp_path: object) -> None:
    from pathlib import Path

    target = Path(str(tmp_path)) / "train.py"
    target.write_text(TRAIN)
    report = run_audit(AuditOptions(target=target, write_ledger=False)).report
    verdicts = {c.item: c for c in report.coverage}
    assert verdicts["5.2"].verdict != "pass" and verdicts["5.3"].verdict != "pass"
    assert not [c for c in report.coverage if "no training loop" in c.reason]
    static_only = [
        c
        for c in report.coverage
        if c.verdict == "not-applicable"
        and c.how.startswith("static rules: ")
        and c.how.count(";") == 0
    ]
    assert static_only, "some items have rules that found nothing to check"
    for entry in static_only:
        rules = entry.how.removeprefix("static rules: ")
        assert entry.reason == f"{rules}: nothing in this code that they check", entry


def test_a_pass_keeps_what_was_measured_as_its_reason() -> None:
    measured = Evidence(
        source="torchdoctor-probes",
        kind="probe",
        message="group 0: accuracy 0.91 over 40 rows; group 1: accuracy 0.88 over 40 rows",
        data={"items": ["12.1"], "verdict": "pass"},
    )
    entry = next(
        c
        for c in OfflineReasoner().reason(PointRequest(point=12, evidence=[measured])).coverage
        if c.item == "12.1"
    )
    assert (entry.verdict, entry.reason) == ("pass", measured.message)
    leak_rules = ["leak-multi-test", "leak-overlap"]
    with_rules = PointRequest(
        point=3,
        rules_run=leak_rules,
        applicable_rules=leak_rules,
        evidence=[measured.model_copy(update={"data": {"items": ["3.1"], "verdict": "pass"}})],
    )
    entry = next(c for c in OfflineReasoner().reason(with_rules).coverage if c.item == "3.1")
    assert entry.reason == f"checked; nothing found; {measured.message}"
