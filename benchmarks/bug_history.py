"""Does torchdoctor describe real bugs? Found/missed on bug-fix commits of public repositories.

Each case of `benchmarks/corpus/bug_history.toml` is a commit that fixed a PyTorch bug. The
buggy version (the commit's first parent) and the fixed version of the case's file are exported
from a local mirror (`<mirror>/<owner>+<name>/repo`, as the session's fetch tool leaves it) into
a cache outside the repository, and each is audited with the static rules in-process. A case is
found when a finding of one of its class's rules lands on the buggy lines (two lines either
side); it is still reported when such a finding lands on the fixed lines of the fix. A missed
case is "described elsewhere" ("elsewh") when a finding of its class's rules in its files goes
away with the fix, off the buggy lines (at the loss call a softmax reaches, at the loop that
never clears gradients); found counts only findings on the buggy lines. Cases whose
mirror is missing are skipped with a message (a benchmark, not a test: never run in CI).

    PYTHONPATH=. python benchmarks/bug_history.py [--cases TOML] [--mirror DIR] [--cache DIR]
        [--only CLASS] [--round ROUND] [-v]

A case may name its `round` (cases gathered together, e.g. a held-out round measured before any
rule change); the summary gives found/audited per round ("tuning" when a case names none).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tomllib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from corpus_repos import CORPUS, DEFAULT_CACHE, DEFAULT_MIRROR, Repo, export_tree, mirror_git_dir

from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.config import AuditConfig
from torchdoctor.agent.gather import engine_config
from torchdoctor.agent.workspace import load_workspace

CASES = CORPUS / "bug_history.toml"
SLACK = 2  # lines either side of the buggy lines where a finding still describes the bug


@dataclass(frozen=True)
class Case:
    id: str
    repo: str
    fix: str
    file: str
    lines: tuple[int, ...]
    fixed_lines: tuple[int, ...]
    bug_class: str
    about: str
    context: tuple[str, ...]
    round: str


def load_cases(path: Path = CASES) -> tuple[dict[str, list[str]], list[Case]]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    classes = {name: spec["rules"] for name, spec in data["classes"].items()}
    cases = [
        Case(
            c["id"],
            c["repo"],
            c["fix"],
            c["file"],
            tuple(c["lines"]),
            tuple(c["fixed_lines"]),
            c["bug_class"],
            c["about"],
            tuple(c.get("context", ())),
            c.get("round", "tuning"),
        )
        for c in data["case"]
    ]
    unknown = {c.bug_class for c in cases} - classes.keys()
    if unknown:
        raise SystemExit(f"bug classes without a [classes] entry: {sorted(unknown)}")
    return classes, cases


def materialise(case: Case, git_dir: Path, cache: Path) -> tuple[Path, Path]:
    """The case's files at the fix's parent and at the fix, exported once into the cache
    (one export per fix and set of files: two cases of one fix may read different files)."""
    paths = {case.file, *case.context}
    files = hashlib.sha1("\n".join(sorted(paths)).encode()).hexdigest()[:8]
    root = cache / "bug-history" / f"{case.repo.replace('/', '+')}-{case.fix[:12]}-{files}"
    buggy, fixed = root / "buggy", root / "fixed"
    if not (root / ".complete").is_file():
        parent = subprocess.run(
            ["git", f"--git-dir={git_dir}", "rev-parse", f"{case.fix}^"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        for commit, out in ((parent, buggy), (case.fix, fixed)):
            out.mkdir(parents=True, exist_ok=True)
            export_tree(git_dir, commit, out, wanted=paths.__contains__)
        (root / ".complete").write_text(case.fix, encoding="utf-8")
    return buggy, fixed


def class_findings(tree: Path, case: Case, rules: list[str]) -> list[tuple[str, int, str]]:
    """(file, line, rule) of the class's rules' findings in the case's files."""
    workspace = load_workspace(tree)
    result = analyse_files(
        workspace.pairs(), engine_config(AuditConfig()), workers=1, manifests=workspace.manifests
    )
    files = {case.file, *case.context}
    return sorted(
        (f.file, f.line, f.rule)
        for f in result.all_findings()
        if f.rule in rules and f.file in files
    )


def hits(findings: list[tuple[str, int, str]], case: Case, lines: tuple[int, ...]) -> list[str]:
    """Findings in the case's file within SLACK lines of `lines`."""
    low, high = min(lines) - SLACK, max(lines) + SLACK
    return [
        f"{rule}@{line}"
        for file, line, rule in findings
        if file == case.file and low <= line <= high
    ]


def gone_with_the_fix(
    before: list[tuple[str, int, str]], after: list[tuple[str, int, str]]
) -> list[str]:
    """Findings of the class's rules that the fix removes elsewhere in the case's files (a
    loss call that no longer receives log-probabilities, a loop that now clears gradients):
    the bug described, though not on its lines. Counted per rule and file."""
    kept = Counter((file, rule) for file, _, rule in after)
    gone: list[str] = []
    for file, line, rule in before:
        if kept[(file, rule)] > 0:
            kept[(file, rule)] -= 1
        else:
            gone.append(f"{rule}@{file}:{line}")
    return gone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mirror", type=Path, default=DEFAULT_MIRROR)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--cases", type=Path, default=CASES, help="a TOML of cases (default: ours)")
    parser.add_argument("--only", action="append", default=[], help="bug class (repeat)")
    parser.add_argument(
        "--round", action="append", default=[], help="cases of a round, e.g. held-out-2 (repeat)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="print each case's about")
    args = parser.parse_args(argv)
    classes, cases = load_cases(args.cases)
    if args.only:
        cases = [c for c in cases if c.bug_class in args.only]
    if args.round:
        cases = [c for c in cases if c.round in args.round]
    found = audited = still = 0
    per_round: dict[str, list[int]] = {}
    for case in cases:
        git_dir = mirror_git_dir(args.mirror, Repo(case.repo, case.fix, "", ""))
        if git_dir is None:
            where = args.mirror / case.repo.replace("/", "+")
            print(f"skip    {case.id}: no mirror at {where} (fetch github:{case.repo})")
            continue
        buggy, fixed = materialise(case, git_dir, args.cache)
        rules = classes[case.bug_class]
        in_buggy, in_fixed = class_findings(buggy, case, rules), class_findings(fixed, case, rules)
        before = hits(in_buggy, case, case.lines)
        after = hits(in_fixed, case, case.fixed_lines)
        gone = [] if before else gone_with_the_fix(in_buggy, in_fixed)
        audited += 1
        found += bool(before)
        still += bool(after)
        tally = per_round.setdefault(case.round, [0, 0, 0])
        tally[0] += bool(before)
        tally[1] += 1
        tally[2] += bool(gone)
        status = "found " if before else ("elsewh" if gone else "missed")
        extra = f"  STILL REPORTED after the fix: {', '.join(after)}" if after else ""
        where = f"{case.file}:{case.lines[0]}"
        shown = " ".join(before or gone)
        print(f"{status}  {case.id:40} {case.bug_class:38} {where}  {shown}{extra}")
        if args.verbose:
            print(f"        {case.repo}@{case.fix[:10]}: {case.about}")
    skipped = len(cases) - audited
    print(
        f"\nfound {found}/{audited} audited cases ({skipped} skipped); "
        f"fixed versions still reported: {still}"
    )
    for name, (hit, total, elsewhere) in sorted(per_round.items()):
        print(
            f"  round {name}: found {hit}/{total}; of the rest, described elsewhere "
            f"(a finding of the class that the fix removes, off the buggy lines): {elsewhere}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
