"""ISSUES.md: merged into, never clobbered; idempotent; hand-set statuses survive."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchdoctor.agent.audit import AuditOptions, run_audit

TRAIN = (
    "import torch\n\n"
    "def train(model, loader, opt):\n"
    "    for x in loader:\n"
    "        model(x).sum().backward()\n"
    "        opt.step()\n"
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "train.py").write_text(TRAIN)
    return tmp_path


def _audit(path: Path, **kwargs: object) -> None:
    run_audit(AuditOptions(target=path, **kwargs))  # type: ignore[arg-type]


def test_existing_content_is_kept_and_rerun_is_byte_identical(project: Path) -> None:
    ledger = project / "ISSUES.md"
    ledger.write_text("# Our issues\n\nHand-written notes stay.\n")
    _audit(project)
    first = ledger.read_bytes()
    assert first.startswith(b"# Our issues\n\nHand-written notes stay.\n")
    assert b"zero-grad-missing" in first
    _audit(project)
    assert ledger.read_bytes() == first


def test_user_status_survives_and_is_reported(project: Path) -> None:
    ledger = project / "ISSUES.md"
    _audit(project)
    text = ledger.read_text()
    assert "- Status: open" in text
    ledger.write_text(
        text.replace("- Status: open", "- Status: wont-fix — we accumulate on purpose", 1)
    )
    outcome = run_audit(AuditOptions(target=project))
    finding = next(f for f in outcome.report.findings if f.rule == "zero-grad-missing")
    assert finding.status.value == "wont-fix"
    assert "we accumulate on purpose" in ledger.read_text()
    assert ledger.read_text().count(finding.id) == 1, "no duplicate entries"


def test_disappeared_findings_are_marked_fixed(project: Path) -> None:
    _audit(project)
    (project / "train.py").write_text(
        TRAIN.replace("        opt.step()\n", "        opt.step()\n        opt.zero_grad()\n")
    )
    _audit(project)
    text = (project / "ISSUES.md").read_text()
    treated = text.split("### Problems treated")[1]
    assert "zero-grad-missing" in treated
    assert "- Status: fixed — no longer detected" in treated


def test_french_ledger(project: Path) -> None:
    _audit(project, lang="fr")
    text = (project / "ISSUES.md").read_text()
    assert "Registre d'audit torchdoctor" in text
    assert "Problèmes à traiter" in text
    assert "Graines fixées et propagées" in text
    assert "- Statut: open" in text


def test_coverage_lists_all_fifty_items(project: Path) -> None:
    _audit(project)
    text = (project / "ISSUES.md").read_text()
    coverage = text.split("### Coverage of the checklist")[1]
    rows = [
        line
        for line in coverage.splitlines()
        if line.startswith("| ") and not line.startswith("| Item")
    ]
    assert len(rows) == 50


def test_single_file_ledger_goes_next_to_the_file_and_no_ledger_writes_nothing(
    tmp_path: Path,
) -> None:
    script = tmp_path / "sub" / "train.py"
    script.parent.mkdir()
    script.write_text(TRAIN)
    _audit(script, write_ledger=False)
    assert not (script.parent / "ISSUES.md").exists()
    _audit(script)
    assert (script.parent / "ISSUES.md").exists()
    custom = tmp_path / "elsewhere" / "LEDGER.md"
    _audit(script, ledger=custom)
    assert custom.exists()


def test_a_fix_checked_and_not_verified_says_why_in_the_ledger(project: Path) -> None:
    """The ledger is where the reader picks what to treat next: a fix the verifier refused
    says which step failed and how (first line, escaped), not only that it is unverified."""
    from torchdoctor.agent.ledger import Ledger
    from torchdoctor.agent.models import Fix, Verification

    report = run_audit(AuditOptions(target=project, write_ledger=False)).report
    finding = next(f for f in report.findings if f.rule == "zero-grad-missing")
    diff = (
        "--- a/train.py\n+++ b/train.py\n@@ -6 +6,2 @@\n"
        "         opt.step()\n+        opt.zero_grad()\n"
    )
    steps = [
        Verification(step="patch-applies", ok=True, detail="train.py"),
        Verification(
            step="smoke-run",
            ok=False,
            detail="stopped at the 280 s budget <b>before</b> step 2\nTraceback (most recent...",
        ),
    ]
    refused = finding.model_copy(update={"fix": Fix(diff=diff, verified=False, verification=steps)})
    others = [f for f in report.findings if f.id != finding.id]
    text = Ledger.empty().merge(report.model_copy(update={"findings": [refused, *others]})).text()
    expected = (
        "(not verified: smoke-run: stopped at the 280 s budget &lt;b&gt;before&lt;/b&gt; step 2):"
    )
    assert expected in text
    assert "Traceback" not in text
    proposed = finding.model_copy(update={"fix": Fix(diff=diff)})
    unchecked = report.model_copy(update={"findings": [proposed, *others]})
    assert "- Fix:" in Ledger.empty().merge(unchecked).text()
