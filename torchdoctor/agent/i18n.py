"""User-facing labels of the ledger and the markdown report, in English and French."""

from __future__ import annotations

LABELS: dict[str, dict[str, str]] = {
    "en": {
        "ledger_title": "torchdoctor audit ledger",
        "managed": "Managed by torchdoctor: edit only the `Status:` lines "
        "(e.g. `wont-fix — reason`); the rest of this block is regenerated on every audit. "
        "Text outside this block is kept.",
        "target": "Target",
        "reasoner": "Reasoner",
        "summary": "Summary by point",
        "point": "Point",
        "title": "Title",
        "open": "To treat",
        "treated": "Treated",
        "to_treat": "Problems to treat",
        "treated_section": "Problems treated",
        "none": "None.",
        "severity": "Severity",
        "phase": "Phase",
        "rule": "Rule",
        "location": "Location",
        "evidence": "Evidence",
        "status": "Status",
        "coverage": "Coverage of the checklist",
        "item": "Item",
        "verdict": "Verdict",
        "how": "How",
        "reason": "Reason",
        "gates": "Correctness gates",
        "gate_line": "after phase {after}: fixes allowed for phases {allowed}; blocked: {blocked}",
        "no_longer": "no longer detected",
        "report_title": "torchdoctor audit report",
        "findings": "Findings",
        "skipped": "Files not audited",
        "notes": "Notes",
        "files_audited": "Files audited",
        "total": "Findings",
        "fix": "Fix",
        "run": "Instrumented run",
        "dataflow": "Data-flow map (one step: shapes, dtypes, devices)",
    },
    "fr": {
        "ledger_title": "Registre d'audit torchdoctor",
        "managed": "Géré par torchdoctor : ne modifiez que les lignes `Statut :` (p. ex. "
        "`wont-fix — raison`) ; le reste de ce bloc est régénéré à chaque audit. Le texte hors "
        "de ce bloc est conservé.",
        "target": "Cible",
        "reasoner": "Raisonneur",
        "summary": "Synthèse par point",
        "point": "Point",
        "title": "Titre",
        "open": "À traiter",
        "treated": "Traités",
        "to_treat": "Problèmes à traiter",
        "treated_section": "Problèmes traités",
        "none": "Aucun.",
        "severity": "Gravité",
        "phase": "Phase",
        "rule": "Règle",
        "location": "Emplacement",
        "evidence": "Preuve",
        "status": "Statut",
        "coverage": "Couverture de la liste de contrôle",
        "item": "Élément",
        "verdict": "Verdict",
        "how": "Méthode",
        "reason": "Motif",
        "gates": "Portes de correction",
        "gate_line": "après la phase {after} : corrections permises pour les phases {allowed} ; "
        "bloquées : {blocked}",
        "no_longer": "n'est plus détecté",
        "report_title": "Rapport d'audit torchdoctor",
        "findings": "Constats",
        "skipped": "Fichiers non audités",
        "notes": "Remarques",
        "files_audited": "Fichiers audités",
        "total": "Constats",
        "fix": "Correctif",
        "run": "Exécution instrumentée",
        "dataflow": "Carte des flux (un pas : formes, dtypes, périphériques)",
    },
}


def labels(lang: str) -> dict[str, str]:
    return LABELS.get(lang, LABELS["en"])
