"""How many planted bugs does torchdoctor find? Recall per bug class on mutated public scripts.

Each case of `benchmarks/corpus/mutations.toml` plants one bug in a public training script of
the corpus (`benchmarks/corpus/manifest.toml`, pinned by commit): a find/replace on one file,
the find text occurring exactly once. A class lists the rules whose finding describes the bug.
A case counts as found when the mutated repository has a finding of one of those rules that the
unmutated repository does not have (same rule, file, flagged code and severity): the finding
is caused by the planted bug, not one the tool already reported (a finding whose severity the
bug raises, e.g. `weights_only=False` on a flagged `torch.load`, counts). The static pass
runs in-process over the whole repository (cross-file rules see what they need); `--linters`
adds the peer linters through a full offline `torchdoctor audit`. Target: recall >= 0.85.

A case may name its `round` (cases planted together, e.g. a held-out round measured before any
rule change, on repositories no rule was tuned to); the summary gives found/planted per round
("tuning" when a case names none), and `--round` measures one round alone.

    python benchmarks/recall.py [--mirror DIR] [--only CLASS] [--round ROUND] [--linters] [-v]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import tomllib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from corpus_repos import (
    CORPUS,
    DEFAULT_CACHE,
    DEFAULT_MIRROR,
    Repo,
    audit_json,
    load_manifest,
    materialise,
)

from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.config import AuditConfig
from torchdoctor.agent.gather import engine_config
from torchdoctor.agent.workspace import load_workspace

MUTATIONS = CORPUS / "mutations.toml"
RECALL_TARGET = 0.85
# rule, file, normalised flagged code (or the finding's fingerprint), severity
Key = tuple[str, str, str, str]


@dataclass(frozen=True)
class Case:
    id: str
    bug_class: str
    repo: str
    file: str
    find: str
    replace: str
    round: str = "tuning"


def load_cases(path: Path = MUTATIONS) -> tuple[dict[str, list[str]], list[Case]]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    classes = {name: spec["rules"] for name, spec in data["classes"].items()}
    cases = [
        Case(
            c["id"],
            c["class"],
            c["repo"],
            c["file"],
            c["find"],
            c["replace"],
            c.get("round", "tuning"),
        )
        for c in data["case"]
    ]
    unknown = {c.bug_class for c in cases} - set(classes)
    if unknown:
        raise SystemExit(f"cases name classes with no rules: {sorted(unknown)}")
    return classes, cases


def _normalise(code: str) -> str:
    return " ".join(code.split())


def static_keys(tree: Path, linters: bool) -> set[Key]:
    """What torchdoctor reports on a tree: (rule, file, flagged code) for each finding."""
    if linters:
        report = audit_json(tree)
        findings = report["findings"]
        return {(f["rule"], f["file"], f["id"], f["severity"]) for f in findings}  # type: ignore[attr-defined]
    workspace = load_workspace(tree)
    result = analyse_files(
        workspace.pairs(), engine_config(AuditConfig()), workers=1, manifests=workspace.manifests
    )
    return {(f.rule, f.file, _normalise(f.code), f.severity) for f in result.all_findings()}


def mutate(tree: Path, case: Case, into: Path) -> None:
    shutil.copytree(tree, into, dirs_exist_ok=True)
    target = into / case.file
    text = target.read_text(encoding="utf-8")
    count = text.count(case.find)
    if count != 1:
        raise SystemExit(f"{case.id}: the find text occurs {count} times in {case.file}")
    target.write_text(text.replace(case.find, case.replace), encoding="utf-8")


def run_case(
    case: Case, rules: list[str], tree: Path, baseline: set[Key], linters: bool
) -> list[Key]:
    with tempfile.TemporaryDirectory() as tmp:
        mutated = Path(tmp) / "tree"
        mutate(tree, case, mutated)
        found = static_keys(mutated, linters)
    return sorted(k for k in found - baseline if k[0] in rules)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mirror", type=Path, default=DEFAULT_MIRROR)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--only", action="append", default=[], help="bug class (repeat)")
    parser.add_argument(
        "--round", action="append", default=[], help="cases of a round, e.g. planted-1 (repeat)"
    )
    parser.add_argument("--linters", action="store_true", help="also run the peer linters")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each case")
    args = parser.parse_args(argv)

    classes, cases = load_cases()
    cases = [c for c in cases if not args.only or c.bug_class in args.only]
    cases = [c for c in cases if not args.round or c.round in args.round]
    repos: dict[str, Repo] = {r.name: r for r in load_manifest()}
    trees: dict[str, Path] = {}
    baselines: dict[str, set[Key]] = {}
    outcome: dict[str, list[bool]] = defaultdict(list)
    per_round: dict[str, list[bool]] = defaultdict(list)
    missed: list[str] = []
    for case in cases:
        if case.repo not in trees:
            trees[case.repo] = materialise(repos[case.repo], args.mirror, args.cache)
            baselines[case.repo] = static_keys(trees[case.repo], args.linters)
        new = run_case(
            case, classes[case.bug_class], trees[case.repo], baselines[case.repo], args.linters
        )
        outcome[case.bug_class].append(bool(new))
        per_round[case.round].append(bool(new))
        if not new:
            missed.append(f"{case.id} ({case.repo}:{case.file})")
        if args.verbose:
            print(f"{'found ' if new else 'MISSED'} {case.id}: {[k[0] for k in new]}")

    print(f"{len(cases)} planted bugs over {len(outcome)} classes\n")
    print(f"{'class':<34}{'cases':>6}{'found':>6}{'recall':>8}")
    for name in sorted(outcome):
        hits = outcome[name]
        print(f"{name:<34}{len(hits):>6}{sum(hits):>6}{sum(hits) / len(hits):>8.2f}")
    total = sum(sum(h) for h in outcome.values())
    recall = total / max(len(cases), 1)
    print(f"{'ALL':<34}{len(cases):>6}{total:>6}{recall:>8.2f}")
    macro = sum(sum(h) / len(h) for h in outcome.values()) / max(len(outcome), 1)
    print(f"\nrecall {recall:.2f} (per-class mean {macro:.2f}; target >= {RECALL_TARGET})")
    for name, hits in sorted(per_round.items()):
        print(f"  round {name}: found {sum(hits)}/{len(hits)} ({sum(hits) / len(hits):.2f})")
    if missed:
        print("missed: " + "; ".join(missed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
