"""Writing the user's files waits on the graph's `interrupt()`: the question carries the
verified diffs; the answer (per fix, with a comment) decides what is written. The report and
the ledger exist before the question, so a refusal loses nothing. Real sandbox runs (local)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_fix_apply_undo import TRAIN
from tests.integration.test_cli import torchdoctor
from torchdoctor.agent.approval import NO_TERMINAL, approve_all, ask_in_terminal
from torchdoctor.agent.audit import AuditOptions, resume_audit, run_audit
from torchdoctor.agent.state import ApprovalAnswer, ApprovalRequest, FixDecision

pytestmark = pytest.mark.slow


def _options(project: Path) -> AuditOptions:
    return AuditOptions(
        target=project, run=["python train.py"], steps=4, probes="cheap", apply=True
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "train.py").write_text(TRAIN)
    return root


def test_the_question_carries_the_verified_diffs_and_a_rejection_writes_nothing(
    project: Path,
) -> None:
    asked: list[ApprovalRequest] = []

    def reject(request: ApprovalRequest) -> ApprovalAnswer:
        asked.append(request)
        assert (project / "ISSUES.md").is_file(), "the ledger is written before the question"
        return ApprovalAnswer(
            decisions=[
                FixDecision(finding_id=c.finding_id, approve=False, comment="not today")
                for c in request.changes
            ]
        )

    outcome = run_audit(_options(project), approver=reject)
    (question,) = asked
    (change,) = question.changes
    assert change.rule == "zero-grad-missing" and "zero_grad" in change.diff
    assert question.audit_id == outcome.audit_id
    assert (project / "train.py").read_text() == TRAIN
    assert any("not approved (not today)" in note for note in outcome.report.summary.notes)


def test_an_unanswered_question_waits_and_the_audit_resumes_with_the_answer(
    project: Path,
) -> None:
    waiting = run_audit(_options(project))
    assert waiting.pending is not None and len(waiting.pending.changes) == 1
    assert waiting.report.findings, "the report exists before the answer"
    assert (project / "train.py").read_text() == TRAIN
    done = resume_audit(waiting.audit_id, approver=approve_all)
    assert done.pending is None and done.refused is None
    assert "zero_grad" in (project / "train.py").read_text()
    assert any(note.startswith("applied 1 verified fix") for note in done.report.summary.notes)


def test_the_terminal_asks_per_diff_and_all_takes_the_rest() -> None:
    request = ApprovalRequest.model_validate(
        {
            "audit_id": "a",
            "target": "t",
            "changes": [
                {
                    "finding_id": f"TD-{n:012d}",
                    "rule": "r",
                    "severity": "high",
                    "title": "t",
                    "file": "f.py",
                    "line": 1,
                    "diff": "-a\n+b\n",
                }
                for n in range(3)
            ],
        }
    )
    answers = iter(["maybe", "n", "a"])
    shown: list[str] = []
    answer = ask_in_terminal(lambda _prompt: next(answers), shown.append)(request)
    assert [d.approve for d in answer.decisions] == [False, True, True]
    assert "answer y, n, a or q" in shown
    quit_all = ask_in_terminal(lambda _prompt: "q", shown.append)(request)
    assert quit_all.approved() == set()


def test_without_a_terminal_or_yes_apply_refuses_in_one_line_and_loses_nothing(
    project: Path,
) -> None:
    run = ("--run", "python train.py", "--steps", "4", "--probes", "cheap")
    result = torchdoctor("audit", str(project), *run, "--apply")
    assert result.returncode == 2
    assert f"no fix applied: {NO_TERMINAL}" in result.stderr
    assert "Traceback" not in result.stderr
    assert '"zero-grad-missing"' in result.stdout or "zero-grad-missing" in result.stdout
    assert (project / "ISSUES.md").is_file()
    assert (project / "train.py").read_text() == TRAIN
