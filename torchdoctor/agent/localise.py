"""The report in the reader's language: rule titles and messages from catalogues (English as
fallback), and the sentences torchdoctor itself writes (coverage reasons, fix notes,
verification details) from one phrase table.

The JSON and SARIF reports stay in English (machines read them); the markdown report and the
ledger are rendered from `localise(report, lang)`. A rule without a French entry, a peer tool's
text and a sentence not in the table stay English: a fallback, never a gap.
"""

from __future__ import annotations

import re
from functools import cache

from torchdoctor.agent.checks.data import load_table
from torchdoctor.agent.models import AuditReport, CoverageEntry, Finding, Fix

# Sources whose message is torchdoctor's own (a peer tool's text is its own words).
OWN_SOURCES = frozenset({"torchdoctor-static", "torchdoctor-probes"})

# (English pattern, French template): whole sentences or clauses torchdoctor writes.
PHRASES_FR: tuple[tuple[str, str], ...] = (
    (r"checked; nothing found", "vérifié ; rien trouvé"),
    (r"(\d+) rule\(s\) fired: (.+)", r"\1 règle(s) déclenchée(s) : \2"),
    (r"(.+): nothing in this code that they check", r"\1 : rien dans ce code qu'elles vérifient"),
    (
        r"needs an instrumented run \(probes: (.+); pass --run\)",
        r"demande une exécution instrumentée (sondes : \1 ; passez --run)",
    ),
    (
        r"needs (.+) \(install torchdoctor\[linters\]\)",
        r"demande \1 (installez torchdoctor[linters])",
    ),
    (
        r"needs a reviewer's judgement \(configure an LLM or review by hand\)",
        "demande le jugement d'un relecteur (configurez un LLM ou relisez à la main)",
    ),
    (
        r"no automated check covers this item yet",
        "aucune vérification automatique ne couvre encore cet élément",
    ),
    (
        r"no test file was found, so nothing shows the code is tested",
        "aucun fichier de test trouvé : rien ne montre que le code est testé",
    ),
    (r"static rules: (.+)", r"règles statiques : \1"),
    (r"evidence: (.+)", r"preuves : \1"),
    (r"none", "aucune"),
    (
        r"fixes: (\d+) proposed, (\d+) verified by execution",
        r"correctifs : \1 proposé(s), \2 vérifié(s) par exécution",
    ),
    (
        r"fixes are not verified without a run: pass --run (.+)",
        r"les correctifs ne sont pas vérifiés sans exécution : passez --run \1",
    ),
    (
        r"applied (\d+) verified fix\(es\); undo with (.+)",
        r"\1 correctif(s) vérifié(s) appliqué(s) ; annulez avec \2",
    ),
    (r"not applied (\S+): (.+)", r"non appliqué \1 : \2"),
    (
        r"the rule no longer fires; no new finding of equal or higher severity",
        "la règle ne se déclenche plus ; aucun nouveau constat de gravité égale ou supérieure",
    ),
    (r"(\d+) file\(s\) parse", r"\1 fichier(s) analysé(s) sans erreur"),
    (r"still fires: (.+)", r"se déclenche encore : \1"),
    (r"no smoke run: pass --run", "pas d'exécution de contrôle : passez --run"),
    (
        r"no smoke run: no planned run executes the changed file; pass a --run whose script "
        r"imports it",
        "pas d'exécution de contrôle : aucune exécution prévue n'exécute le fichier modifié ; "
        "passez un --run dont le script l'importe",
    ),
    (
        r"unverified: the run did not execute the change(.*)",
        r"non vérifié : l'exécution n'a pas exécuté la modification\1",
    ),
    (
        r"the run executed every changed block \((\d+)\) under (.+)",
        r"l'exécution a exécuté chaque bloc modifié (\1) sous \2",
    ),
    (r"(\d+) of (\d+) steps recorded \((.+)\)", r"\1 pas enregistrés sur \2 (\3)"),
    (
        r"(\d+) of (\d+) forward passes recorded \((.+)\)",
        r"\1 passes avant enregistrées sur \2 (\3)",
    ),
    (
        r"the fixed script fails where the original fails \((.+)\): a failure the fix did not "
        r"cause, which keeps it from being judged until it is fixed",
        r"le script corrigé échoue là où échoue l'original (\1) : un échec que le correctif "
        r"n'a pas causé, qui empêche de le juger tant qu'il n'est pas corrigé",
    ),
    (r"the fixed script failed: (.+)", r"le script corrigé échoue : \1"),
    (r"loss trajectory: (.+)", r"trajectoire de la perte : \1"),
    (r"symptom: (.+)", r"symptôme : \1"),
    (r"run `(.+?)`: (\S+) — (.+)", r"exécution `\1` : \2 — \3"),
    (
        r"needs an instrumented run with (.+) \(pass --run and (.+)\)",
        r"demande une exécution instrumentée avec \1 (passez --run et \2)",
    ),
    (
        r"opt-in rule\(s\) not selected: (.+) \(--select\)",
        r"règle(s) optionnelle(s) non sélectionnée(s) : \1 (--select)",
    ),
    (
        r"rule\(s\) turned off: (.+) \(--ignore or config\)",
        r"règle(s) désactivée(s) : \1 (--ignore ou configuration)",
    ),
    (
        r"(\d+) ML test\(s\) for (\S+) pass in the sandbox",
        r"\1 test(s) ML pour \2 passent dans le bac à sable",
    ),
    (
        r"(\d+) left out because they fail on the current code \((.+)\): see the findings",
        r"\1 écarté(s) car en échec sur le code actuel (\2) : voir les constats",
    ),
    (
        r"(\d+) left out because they did not finish within the sandbox's time limit \((.+)\)",
        r"\1 écarté(s) faute d'avoir fini dans le temps imparti au bac à sable (\2)",
    ),
    (
        r"offered as (\S+), written by --apply after approval",
        r"proposé sous \1, écrit par --apply après approbation",
    ),
    (
        r"jaxtyping annotations of (\S+) \((.+)\) from (\d+) observed signature\(s\), checked "
        r"at run time in the sandbox",
        r"annotations jaxtyping de \1 (\2) tirées de \3 signature(s) observée(s), vérifiées à "
        r"l'exécution dans le bac à sable",
    ),
    (
        r"jaxtyping annotations of (\S+) \((.+)\) from (\d+) observed signature\(s\), and of "
        r"what (.+) returns?, checked at run time in the sandbox",
        r"annotations jaxtyping de \1 (\2) tirées de \3 signature(s) observée(s), et de ce que "
        r"renvoie \4, vérifiées à l'exécution dans le bac à sable",
    ),
    (
        r"input checks for (\S+) \((.+)\): they pass the run's data and reject (\d+) broken "
        r"input\(s\) in the sandbox",
        r"contrôles des entrées de \1 (\2) : ils acceptent les données de l'exécution et "
        r"rejettent \3 entrée(s) cassée(s) dans le bac à sable",
    ),
    (r"the code has them already: (.+)", r"le code les a déjà : \1"),
    (r"an export check for (\S+) \((.+)", r"un contrôle d'export pour \1 (\2"),
    (
        r"(\S+) exports and runs in ONNX Runtime, in the sandbox$",
        r"\1 s'exporte et tourne dans ONNX Runtime, dans le bac à sable",
    ),
    (r"(\S+) does not export$", r"\1 ne s'exporte pas"),
    (r"export check: (.+)", r"contrôle d'export : \1"),
    (r"(torch\.export|onnx): exported", r"\1 : exporté"),
    (r"(torch\.export|onnx|onnxruntime): failed \((.+)\)$", r"\1 : en échec (\2)"),
    (
        r"(onnx|onnxruntime): not tried, (.+) not installed \(torchdoctor\[artifacts\]\)",
        r"\1 : non essayé, \2 non installé (torchdoctor[artifacts])",
    ),
    (
        r"(\S+): unfinished \(the run ended first \((\S+)\)\)",
        r"\1 : inachevé (l'exécution s'est arrêtée avant (\2))",
    ),
    (
        r"onnxruntime: outputs within atol (\S+) \+ rtol (\S+) of eager \(max \|diff\| (\S+)\), "
        r"(.+) vs eager (.+) per batch, one thread each \((\S+)\)",
        r"onnxruntime : sorties à atol \1 + rtol \2 près de l'eager (|écart| max \3), \4 contre "
        r"\5 en eager par lot, un thread chacun (\6)",
    ),
    (r"tensorrt: not tried \(needs (.+)\)", r"tensorrt : non essayé (demande \1)"),
    (
        r"integrated gradients for (\S+) \(finite, complete within atol (\S+) \+ rtol (\S+) "
        r"with (\d+) steps on (\d+) inputs, in the sandbox\) and a per-group metrics helper",
        r"gradients intégrés pour \1 (finis, complets à atol \2 + rtol \3 près avec \4 pas sur "
        r"\5 entrées, dans le bac à sable) et une fonction de métriques par groupe",
    ),
    (
        r"the code names (.+), but (\S+)'s observed inputs \((.+)\) carry no column names, so "
        r"the rows cannot be split by group here",
        r"le code nomme \1, mais les entrées observées de \2 (\3) n'ont pas de noms de colonnes : "
        r"les lignes ne peuvent pas être réparties par groupe ici",
    ),
    (
        r"group_metrics\(\) in (\S+) computes per-group accuracy and the gap once given that "
        r"column",
        r"group_metrics() dans \1 calcule l'exactitude par groupe et l'écart une fois cette "
        r"colonne donnée",
    ),
    (r"--artifacts (\S+): (\S+): (.+)", r"--artifacts \1 : \2 : \3"),
    (r"written as (\S+)", r"écrit sous \1"),
    (r"artifact: (\S+)", r"artefact : \1"),
    (r"artifact written: (\S+)", r"artefact écrit : \1"),
    (
        r"tensor shapes annotated \(jaxtyping or torchtyping\) in (.+)",
        r"formes des tenseurs annotées (jaxtyping ou torchtyping) dans \1",
    ),
    (
        r"no tensor-shape annotations \(jaxtyping\) in the code: nothing states the shapes "
        r"forward\(\) expects",
        "aucune annotation de forme des tenseurs (jaxtyping) dans le code : rien n'indique les "
        "formes qu'attend forward()",
    ),
    (r"drift monitoring in (.+)", r"surveillance de la dérive dans \1"),
    (
        r"no drift monitoring in the code: no input statistics are compared with a training "
        r"reference \(--artifacts drift generates a snippet\)",
        "aucune surveillance de la dérive dans le code : aucune statistique des entrées n'est "
        "comparée à une référence d'entraînement (--artifacts drift génère un extrait)",
    ),
    (
        r"an inference compiler or runtime is used in (.+)",
        r"un compilateur ou moteur d'inférence est utilisé dans \1",
    ),
    (
        r"no inference compiler \(TensorRT, ONNX Runtime, OpenVINO\) in the code",
        "aucun compilateur d'inférence (TensorRT, ONNX Runtime, OpenVINO) dans le code",
    ),
    (
        r"TensorRT needs a CUDA GPU and torch-tensorrt(.*)",
        r"TensorRT demande un GPU CUDA et torch-tensorrt\1",
    ),
    (r"attributions computed in (.+)", r"attributions calculées dans \1"),
    (
        r"no attribution code \(Captum, SHAP, Grad-CAM\) in the project",
        "aucun code d'attribution (Captum, SHAP, Grad-CAM) dans le projet",
    ),
    (
        r"the opt-in rule (\S+) \(--select\) points at (.+)",
        r"la règle optionnelle \1 (--select) signale l'endroit",
    ),
    (
        r"inputs checked \(shape, dtype or finiteness\) in (.+)",
        r"entrées vérifiées (forme, dtype ou finitude) dans \1",
    ),
    (
        r"no input validation in the code: no assert or raise on a tensor's shape, dtype or "
        r"finiteness at the model or data boundary",
        "aucune validation des entrées dans le code : aucun assert ni raise sur la forme, le "
        "dtype ou la finitude d'un tenseur à l'entrée du modèle ou des données",
    ),
    (
        r"no function does three or more of training, evaluation, I/O and plotting",
        "aucune fonction ne fait à la fois trois ou plus parmi entraînement, évaluation, E/S et "
        "tracés",
    ),
    (
        r"no if/elif chain in the (\d+) Python file\(s\) picks an implementation by comparing a "
        r"name with strings",
        r"aucune chaîne if/elif dans les \1 fichier(s) Python ne choisit une implémentation en "
        r"comparant un nom à des chaînes",
    ),
    (
        r"whether a strategy or factory would pay elsewhere needs a reviewer's judgement "
        r"\(configure an LLM or review by hand\)",
        "savoir si une stratégie ou une fabrique paierait ailleurs demande le jugement d'un "
        "relecteur (configurez un LLM ou relisez à la main)",
    ),
    (
        r"no paper is cited \(no arXiv id or DOI in the project\): the method the code should "
        r"follow is not stated where a check could read it",
        "aucun article cité (ni identifiant arXiv ni DOI dans le projet) : la méthode que le "
        "code doit suivre n'est pas écrite là où une vérification pourrait la lire",
    ),
    (
        r"cites (.+): whether the code follows it needs a reviewer's judgement \(configure an "
        r"LLM or review by hand\)",
        r"cite \1 : savoir si le code le suit demande le jugement d'un relecteur (configurez un "
        r"LLM ou relisez à la main)",
    ),
    (r"metrics disaggregated by group in (.+)", r"métriques ventilées par groupe dans \1"),
    (
        r"the data has (.+) but no metric is computed per group",
        r"les données ont \1 mais aucune métrique n'est calculée par groupe",
    ),
    (
        r"no group column or sensitive attribute appears in the code: nothing to compare "
        r"metrics across \(declare one in \[tool.torchdoctor.groups\] to have the run compute "
        r"per-group metrics\)",
        "aucune colonne de groupe ni attribut sensible dans le code : rien entre quoi comparer "
        "les métriques (déclarez-en une dans [tool.torchdoctor.groups] pour que l'exécution "
        "calcule des métriques par groupe)",
    ),
)

STEP_FR = {
    "patch-applies": "le correctif s'applique",
    "parses": "analyse syntaxique",
    "rule-cleared": "règle levée",
    "smoke-run": "exécution de contrôle",
    "crash-moved-on": "erreur d'origine dépassée",
    "executed-change": "modification exécutée",
    "behaviour": "comportement",
    "speed-up": "accélération",
}


@cache
def _compiled(lang: str) -> tuple[tuple[re.Pattern[str], str], ...]:
    table = PHRASES_FR if lang == "fr" else ()
    return tuple((re.compile(rf"^{pattern}$", re.S), template) for pattern, template in table)


def phrase(text: str, lang: str) -> str:
    """A sentence torchdoctor wrote, in `lang`: each `; `-separated clause translated when the
    table knows it, kept as is otherwise."""
    if lang == "en" or not text:
        return text
    for pattern, template in _compiled(lang):
        if "; " in pattern.pattern and pattern.match(text):
            return pattern.sub(template, text)  # a sentence that has a `; ` of its own
    clauses = []
    for clause in text.split("; "):
        for pattern, template in _compiled(lang):
            if pattern.match(clause):
                clause = pattern.sub(template, clause)
                break
        clauses.append(clause)
    return " ; ".join(clauses) if lang == "fr" else "; ".join(clauses)


@cache
def rule_text(lang: str) -> dict[str, dict[str, str]]:
    """Rule id -> {title, message} in `lang` (empty for English: the rules carry it)."""
    if lang == "en":
        return {}
    table: dict[str, dict[str, str]] = load_table(f"rules_{lang}.json")["rules"]
    return table


def _finding(finding: Finding, lang: str) -> Finding:
    text = rule_text(lang).get(finding.rule)
    evidence = [
        ev.model_copy(update={"message": text["message"]})
        if text and ev.source in OWN_SOURCES and index == 0
        else ev
        for index, ev in enumerate(finding.evidence)
    ]
    update: dict[str, object] = {"evidence": evidence}
    if text:
        update["title"] = text["title"]
    if finding.fix is not None:
        update["fix"] = _fix(finding.fix, lang)
    return finding.model_copy(update=update)


def _fix(fix: Fix, lang: str) -> Fix:
    steps = [
        v.model_copy(update={"step": STEP_FR.get(v.step, v.step), "detail": phrase(v.detail, lang)})
        for v in fix.verification
    ]
    return fix.model_copy(update={"verification": steps})


def _coverage(entry: CoverageEntry, lang: str) -> CoverageEntry:
    return entry.model_copy(
        update={"how": phrase(entry.how, lang), "reason": phrase(entry.reason, lang)}
    )


def localise(report: AuditReport, lang: str) -> AuditReport:
    """The report with every text torchdoctor writes in `lang` (English left where unknown)."""
    if lang == "en":
        return report
    summary = report.summary.model_copy(
        update={"notes": [phrase(n, lang) for n in report.summary.notes]}
    )
    return report.model_copy(
        update={
            "findings": [_finding(f, lang) for f in report.findings],
            "coverage": [_coverage(c, lang) for c in report.coverage],
            "summary": summary,
        }
    )
