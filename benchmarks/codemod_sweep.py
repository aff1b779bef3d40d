"""Do the codemods hold up on code they were not written against?

Every finding that has a codemod, on the repositories of `benchmarks/corpus/manifest.toml`
(or on the folders given with `--path`), is handed to its codemod on the real file. Each
attempt ends in one of:

- `fixed`: the fixed file parses, and the rule no longer fires there;
- `declined`: the codemod found no safe edit (its reason, when it gives one, is counted);
- `still-flagged`: the file was edited but the rule still fires on the same statement;
- `broken`: the fixed file does not parse;
- `crashed`: the codemod raised.

`broken` and `crashed` are defects (target 0). A fix that brings new findings of other rules
into the file is counted as `introduced`. Printed per rule and in total.

The counts judge parsing and the rule only: a fix that changes what the code computes still
counts as `fixed`. `--diff DIR` writes every edit as a unified diff (one file per attempt) so
that each can be read against the original.

    python benchmarks/codemod_sweep.py [--mirror DIR] [--only NAME] [--path DIR ...] [--show]
                                       [--select RULE|all] [--diff DIR]
"""

from __future__ import annotations

import argparse
import ast
import difflib
import sys
import traceback
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from corpus_repos import DEFAULT_MIRROR, audit_json, load_manifest, materialise

from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.checks.engine import analyse_source
from torchdoctor.agent.checks.registry import all_rules
from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.models import FixTarget
from torchdoctor.agent.models import Finding

OUTCOMES = ("fixed", "declined", "still-flagged", "broken", "crashed")


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    introduced: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)


def rule_lines(path: str, source: str, rule: str, config: EngineConfig) -> list[int]:
    """Lines where `rule` fires in `source`, analysed alone (cross-file facts left out)."""
    result = analyse_source(path, source, all_rules(), config)
    return [f.line for f in result.findings if f.rule == rule]


def other_findings(path: str, source: str, rule: str, config: EngineConfig) -> Counter[str]:
    result = analyse_source(path, source, all_rules(), config)
    return Counter(f.rule for f in result.findings if f.rule != rule)


def write_diff(into: Path, where: str, rule: str, source: str, fixed: str) -> None:
    """The edit as a unified diff, named after the rule and the finding's place."""
    name = f"{rule}--{where.replace('/', '_').replace(':', '_')}.diff"
    lines = difflib.unified_diff(
        source.splitlines(keepends=True), fixed.splitlines(keepends=True), where, f"{where} fixed"
    )
    into.mkdir(parents=True, exist_ok=True)
    (into / name).write_text("".join(lines), encoding="utf-8")


def attempt(
    root: Path, finding: Finding, tally: Tally, config: EngineConfig, diffs: Path | None
) -> None:
    codemod = codemod_for(finding.rule)
    assert codemod is not None
    source = (root / finding.file).read_text(encoding="utf-8", errors="replace")
    target = FixTarget.from_finding(finding)
    where = f"{root.name}/{finding.file}:{finding.line}"
    try:
        fixed = codemod.transform(source, target)
    except Exception:  # a crash is what this benchmark counts
        tally.outcomes["crashed"] += 1
        tally.examples.append(f"crashed {where}: {traceback.format_exc(limit=2).splitlines()[-1]}")
        return
    if fixed is None:
        tally.outcomes["declined"] += 1
        reason = codemod.explain(source, target) or "(no reason given)"
        tally.reasons[reason[:90]] += 1
        return
    if diffs is not None:
        write_diff(diffs, where, finding.rule, source, fixed)
    try:
        ast.parse(fixed)
    except SyntaxError as exc:
        tally.outcomes["broken"] += 1
        tally.examples.append(f"broken {where}: {exc.msg} at line {exc.lineno}")
        return
    before = rule_lines(finding.file, source, finding.rule, config)
    after = rule_lines(finding.file, fixed, finding.rule, config)
    if len(after) >= len(before) and before:
        tally.outcomes["still-flagged"] += 1
        tally.examples.append(f"still-flagged {where}")
    else:
        tally.outcomes["fixed"] += 1
    new = other_findings(finding.file, fixed, finding.rule, config) - other_findings(
        finding.file, source, finding.rule, config
    )
    if new:
        tally.introduced += 1
        tally.examples.append(f"introduced {sorted(new)} {where}")


def sweep(roots: list[Path], select: list[str], diffs: Path | None) -> dict[str, Tally]:
    tallies: dict[str, Tally] = defaultdict(Tally)
    extra = [arg for rule in select for arg in ("--select", rule)]
    config = EngineConfig(select=frozenset(select))
    for root in roots:
        report = audit_json(root, *extra, linters=False)
        findings = [Finding.model_validate(raw) for raw in report["findings"]]  # type: ignore[attr-defined]
        for finding in findings:
            if codemod_for(finding.rule) is None or not finding.file.endswith(".py"):
                continue
            if not (root / finding.file).is_file():
                continue
            attempt(root, finding, tallies[finding.rule], config, diffs)
        print(f"swept {root.name}: {len(findings)} findings", file=sys.stderr)
    return tallies


def print_table(tallies: dict[str, Tally], show: bool) -> None:
    header = f"{'rule':36} " + " ".join(f"{name:>13}" for name in OUTCOMES) + f" {'introduced':>11}"
    print(header)
    total = Tally()
    for rule in sorted(tallies):
        tally = tallies[rule]
        total.outcomes.update(tally.outcomes)
        total.introduced += tally.introduced
        counts = " ".join(f"{tally.outcomes[name]:>13}" for name in OUTCOMES)
        print(f"{rule:36} {counts} {tally.introduced:>11}")
    counts = " ".join(f"{total.outcomes[name]:>13}" for name in OUTCOMES)
    print(f"{'all':36} {counts} {total.introduced:>11}")
    defects = total.outcomes["broken"] + total.outcomes["crashed"]
    print(f"defects (broken + crashed): {defects} (target 0)")
    if show:
        for rule in sorted(tallies):
            for example in tallies[rule].examples:
                print(f"  {rule}: {example}")
            for reason, count in tallies[rule].reasons.most_common(5):
                print(f"  {rule}: declined x{count}: {reason}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", type=Path, default=DEFAULT_MIRROR)
    parser.add_argument("--only", action="append", default=[], help="a manifest repo name")
    parser.add_argument("--path", type=Path, action="append", default=[], help="a folder")
    parser.add_argument("--show", action="store_true", help="list every defect and reason")
    parser.add_argument(
        "--select", action="append", default=[], help="opt-in rules to sweep too (or 'all')"
    )
    parser.add_argument("--diff", type=Path, help="write each edit's unified diff into DIR")
    args = parser.parse_args()
    roots = list(args.path)
    if not roots:
        repos = [r for r in load_manifest() if not args.only or r.name in args.only]
        roots = [materialise(repo, args.mirror) for repo in repos]
    tallies = sweep(roots, args.select, args.diff)
    print_table(tallies, args.show)
    return 1 if any(t.outcomes["broken"] or t.outcomes["crashed"] for t in tallies.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
