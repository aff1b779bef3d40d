"""How often is a finding right on correct, mature code? Precision per rule, findings per kLOC.

Every repository of `benchmarks/corpus/manifest.toml` (public, mature PyTorch training code,
pinned by commit) is audited offline with the peer linters and no runs. Findings are joined
with the committed labels (`benchmarks/corpus/labels.json`: `<repo>:<finding id>` -> `true`,
`false` or `debatable`, each with the reason, written by a person who read the code). The
finding id is torchdoctor's fingerprint (rule, file, normalised code), so labels survive line
moves and rule changes that keep the finding.

Printed: per rule, findings, labelled, true/false/debatable and precision (true over true +
false; debatable findings are shown, not counted; `strict` counts them as false); the same
for native rules, peer linters and all; findings per 1,000 non-blank lines per repository and
over the corpus. A seeded sample of unlabelled findings can be written as a worksheet to label
(`--worksheet`). Targets: precision >= 0.90, <= 12 findings per 1,000 lines.

    python benchmarks/precision.py [--mirror DIR] [--only NAME] [--worksheet FILE] [--sample N]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from corpus_repos import (
    CORPUS,
    DEFAULT_CACHE,
    DEFAULT_MIRROR,
    Repo,
    audit_json,
    is_peer,
    load_manifest,
    materialise,
    stable_order,
)

from torchdoctor.agent.workspace import load_workspace

LABELS = CORPUS / "labels.json"
PRECISION_TARGET = 0.90
DENSITY_TARGET = 12.0


@dataclass(frozen=True)
class Seen:
    key: str
    repo: str
    rule: str
    severity: str
    file: str
    line: int
    title: str
    excerpt: str


def code_lines(tree: Path) -> int:
    """Non-blank lines of what torchdoctor audits in the tree (the density's denominator)."""
    workspace = load_workspace(tree)
    return sum(1 for f in workspace.files for line in f.text.splitlines() if line.strip())


def audit_repo(repo: Repo, mirror: Path, cache: Path, extra: list[str]) -> tuple[list[Seen], int]:
    tree = materialise(repo, mirror, cache)
    report = audit_json(tree, *extra)
    seen: list[Seen] = []
    for finding in report["findings"]:  # type: ignore[attr-defined]
        evidence = finding["evidence"][0] if finding["evidence"] else {}
        seen.append(
            Seen(
                key=f"{repo.name}:{finding['id']}",
                repo=repo.name,
                rule=finding["rule"],
                severity=finding["severity"],
                file=finding["file"],
                line=finding["line"],
                title=finding["title"],
                excerpt=evidence.get("excerpt", ""),
            )
        )
    return seen, code_lines(tree)


def _precision(true: int, false: int) -> str:
    return f"{true / (true + false):.2f}" if true + false else "-"


def print_table(findings: list[Seen], labels: dict[str, dict[str, str]]) -> dict[str, float]:
    rows: dict[str, Counter[str]] = defaultdict(Counter)
    for f in findings:
        verdict = labels.get(f.key, {}).get("label", "unlabelled")
        for group in (f.rule, "ALL native" if not is_peer(f.rule) else "ALL peer", "ALL"):
            rows[group]["findings"] += 1
            rows[group][verdict] += 1
    header = (
        f"{'rule':<34}{'found':>6}{'lab.':>6}{'true':>6}{'false':>6}{'deb.':>6}"
        f"{'prec.':>7}{'strict':>7}"
    )
    print(header)
    print("-" * len(header))
    order = sorted((r for r in rows if not r.startswith("ALL")), key=lambda r: -rows[r]["findings"])
    results: dict[str, float] = {}
    for rule in [*order, "ALL native", "ALL peer", "ALL"]:
        if rule not in rows:
            continue
        c = rows[rule]
        labelled = c["true"] + c["false"] + c["debatable"]
        print(
            f"{rule:<34}{c['findings']:>6}{labelled:>6}{c['true']:>6}{c['false']:>6}"
            f"{c['debatable']:>6}{_precision(c['true'], c['false']):>7}"
            f"{_precision(c['true'], c['false'] + c['debatable']):>7}"
        )
        if c["true"] + c["false"]:
            results[rule] = c["true"] / (c["true"] + c["false"])
    return results


def write_worksheet(
    path: Path, findings: list[Seen], labels: dict[str, dict[str, str]], size: int
) -> None:
    """A seeded sample of unlabelled findings, with their excerpts, to label by hand."""
    pending = [f for f in findings if f.key not in labels]
    pending.sort(key=lambda f: stable_order(f.key, "precision"))
    sample = pending[:size]
    path.write_text(
        json.dumps(
            [
                {
                    "key": f.key,
                    "rule": f.rule,
                    "where": f"{f.file}:{f.line}",
                    "title": f.title,
                    "excerpt": f.excerpt,
                }
                for f in sample
            ],
            indent=1,
        ),
        encoding="utf-8",
    )
    print(f"worksheet: {len(sample)} unlabelled findings -> {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--mirror", type=Path, default=DEFAULT_MIRROR)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--only", action="append", default=[], help="repository name (repeat)")
    parser.add_argument("--worksheet", type=Path, help="write unlabelled sampled findings here")
    parser.add_argument("--sample", type=int, default=250, help="worksheet size")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--dump", type=Path, help="write every finding seen (JSON)")
    parser.add_argument(
        "--from-dump", type=Path, help="re-score a previous --dump instead of auditing again"
    )
    parser.add_argument("audit_args", nargs="*", help="extra `torchdoctor audit` options")
    args = parser.parse_args(argv)

    repos = [r for r in load_manifest() if not args.only or r.name in args.only]
    labels: dict[str, dict[str, str]] = json.loads(LABELS.read_text(encoding="utf-8"))
    if args.from_dump:
        dumped = json.loads(args.from_dump.read_text(encoding="utf-8"))
        previous = [Seen(**f) for f in dumped["findings"]]
        done = [
            ([f for f in previous if f.repo == r.name], dumped["lines"].get(r.name, 0))
            for r in repos
        ]
    else:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            done = list(
                pool.map(lambda r: audit_repo(r, args.mirror, args.cache, args.audit_args), repos)
            )
    findings = [f for seen, _ in done for f in seen]
    print(f"{len(repos)} repositories, {len(findings)} findings\n")
    print(f"{'repository':<48}{'lines':>8}{'found':>7}{'per kLOC':>10}")
    total_lines = 0
    for repo, (seen, lines) in zip(repos, done, strict=True):
        total_lines += lines
        density = 1000 * len(seen) / max(lines, 1)
        print(f"{repo.name:<48}{lines:>8}{len(seen):>7}{density:>10.1f}")
    density = 1000 * len(findings) / max(total_lines, 1)
    print(f"{'corpus':<48}{total_lines:>8}{len(findings):>7}{density:>10.1f}\n")
    results = print_table(findings, labels)
    overall = results.get("ALL", 0.0)
    print(
        f"\nprecision {overall:.2f} (target >= {PRECISION_TARGET}); "
        f"{density:.1f} findings per 1,000 lines (target <= {DENSITY_TARGET:g})"
    )
    stale = set(labels) - {f.key for f in findings}
    if stale:
        print(f"{len(stale)} labels match no finding any more (fixed false positives, or moved)")
    if args.dump:
        lines_of = {r.name: lines for r, (_, lines) in zip(repos, done, strict=True)}
        dump = {"lines": lines_of, "findings": [f.__dict__ for f in findings]}
        args.dump.write_text(json.dumps(dump, indent=1), "utf-8")
    if args.worksheet:
        write_worksheet(args.worksheet, findings, labels, args.sample)
    return 0


if __name__ == "__main__":
    sys.exit(main())
