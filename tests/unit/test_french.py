"""French throughout (issue 13, item 8): every native and probe rule has its title and message
in English (the rule) and in French (the catalogue); the markdown report and the ledger carry
them, with coverage reasons and fix notes, and English is the fallback, never a gap."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import EXAMPLES
from torchdoctor.agent.audit import AuditOptions, run_audit
from torchdoctor.agent.checks.catalogue import catalogue
from torchdoctor.agent.checks.data import load_table
from torchdoctor.agent.localise import localise, phrase
from torchdoctor.agent.models import Fix, Verification
from torchdoctor.agent.report.markdown import render_markdown


def test_every_native_and_probe_rule_has_both_languages() -> None:
    french = load_table("rules_fr.json")["rules"]
    own = {r.id: r for r in catalogue().values() if r.kind in ("native", "probe")}
    for rule_id, rule in own.items():
        assert rule.title and rule.doc, f"{rule_id}: English title and text"
        entry = french.get(rule_id)
        assert entry and entry["title"] and entry["message"], (
            f"{rule_id}: add its French title and message to "
            "torchdoctor/agent/checks/data/rules_fr.json"
        )
        assert entry["title"] != rule.title or "(" in rule.title or "_" in rule.title, rule_id
    assert set(french) <= set(own), "no French entry for a rule that does not exist"


def test_coverage_reasons_and_fix_notes_are_phrased_in_french() -> None:
    assert phrase("checked; nothing found", "fr") == "vérifié ; rien trouvé"
    assert phrase("2 rule(s) fired: a, b", "fr") == "2 règle(s) déclenchée(s) : a, b"
    assert (
        phrase("static rules: x; evidence: ruff", "fr") == "règles statiques : x ; preuves : ruff"
    )
    assert phrase("fixes: 3 proposed, 1 verified by execution", "fr").startswith("correctifs : 3")
    assert phrase("a sentence nobody translated", "fr") == "a sentence nobody translated"
    assert phrase("checked; nothing found", "en") == "checked; nothing found"


def test_a_french_report_and_ledger_speak_french(tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "train_buggy.py", tmp_path / "train_buggy.py")
    ledger = tmp_path / "ISSUES.md"
    outcome = run_audit(AuditOptions(target=tmp_path, lang="fr", ledger=ledger))
    report = outcome.report
    french = load_table("rules_fr.json")["rules"]
    text = render_markdown(report, "fr")
    written = ledger.read_text(encoding="utf-8")
    for finding in report.findings:
        assert french[finding.rule]["title"] in text, finding.rule
        assert french[finding.rule]["title"] in written, finding.rule
        assert f"] {finding.title} — " not in text, f"English title left in: {finding.title}"
    assert "vérifié ; rien trouvé" in text or "rien dans ce code" in text
    assert "checked; nothing found" not in written
    assert report.findings[0].title == catalogue()[report.findings[0].rule].title, (
        "the JSON report stays English"
    )


def test_fix_verification_details_are_localised() -> None:
    shutil_report = run_audit(
        AuditOptions(target=EXAMPLES / "train_buggy.py", write_ledger=False)
    ).report
    finding = shutil_report.findings[0].model_copy(
        update={
            "fix": Fix(
                diff="",
                verification=[
                    Verification(step="parses", ok=True, detail="1 file(s) parse"),
                    Verification(step="smoke-run", ok=False, detail="no smoke run: pass --run"),
                ],
            )
        }
    )
    local = localise(shutil_report.model_copy(update={"findings": [finding]}), "fr")
    steps = local.findings[0].fix.verification if local.findings[0].fix else []
    assert [(v.step, v.detail) for v in steps] == [
        ("analyse syntaxique", "1 fichier(s) analysé(s) sans erreur"),
        ("exécution de contrôle", "pas d'exécution de contrôle : passez --run"),
    ]


def test_annotations_of_the_projects_data_functions_are_phrased_in_french() -> None:
    english = (
        "jaxtyping annotations of TinyGPT.forward (idx and the result) from 1 observed "
        "signature(s), and of what RandomTokens.__getitem__ returns, checked at run time in the "
        "sandbox"
    )
    assert phrase(english, "fr") == (
        "annotations jaxtyping de TinyGPT.forward (idx and the result) tirées de 1 signature(s) "
        "observée(s), et de ce que renvoie RandomTokens.__getitem__, vérifiées à l'exécution "
        "dans le bac à sable"
    )
