"""Writing the user's files waits on the graph's `interrupt()`: the question carries the
verified diffs; the answer (per fix, with a comment) decides what is written. The report and
the ledger exist before the question, so a refusal loses nothing. Real sandbox runs (local)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.e2e.test_fix_apply_undo import TRAIN
from torchdoctor.agent.approval import NO_TERMINAL, approve_all, ask_in_terminal
from torchdoctor.agent.audit import AuditOptions, resume_audit, run_audit
from torchdoctor.agent.state import ApprovalAnswer, ApprovalRequest, FixDecision

pytestmark = pytest.mark.slow


def _options(project: Path) -> AuditOptions:
    return AuditOptions(
        target=project, run=["python train.py"], steps=4, probes="cheap", apply=True
    )


def _project(root: Path) -> Path:
    project = root / "project"
    project.mkdir()
    (project / "train.py").write_text(TRAIN)
    return project


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return _project(tmp_path)


@pytest.fixture(scope="module", autouse=True)
def refused(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """`torchdoctor audit --apply` with no terminal on stdin, started before the module's first
    test: its run and fix verification go on beside the in-process audits of the tests before
    the one that reads it. A home of its own, no LLM settings, no peer linters (as every test's
    `_isolated_home`)."""
    root = tmp_path_factory.mktemp("refused")
    project = _project(root)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env.pop("TORCHDOCTOR_MODEL", None)
    env.update(TORCHDOCTOR_HOME=str(root / "home"), TORCHDOCTOR_LINTERS="0")
    run = ["--run", "python train.py", "--steps", "4", "--probes", "cheap"]
    process = subprocess.Popen(
        [sys.executable, "-m", "torchdoctor", "audit", str(project), *run, "--apply"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
        start_new_session=True,
    )
    try:
        yield process, project
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()


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
    refused: tuple[subprocess.Popen[str], Path],
) -> None:
    process, project = refused
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 2
    assert f"no fix applied: {NO_TERMINAL}" in stderr
    assert "Traceback" not in stderr
    assert '"zero-grad-missing"' in stdout or "zero-grad-missing" in stdout
    assert (project / "ISSUES.md").is_file()
    assert (project / "train.py").read_text() == TRAIN
