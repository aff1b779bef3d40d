"""Attaches a peer linter's finding to the native finding that already reports it.

TorchFix TOR102, bandit B614 and the native torch.load rule all flag the same call; the report
should show one finding backed by three tools, not three findings. A linter finding attaches
to a native finding in the same file whose span, widened by one line, contains it and whose
rule reports the same concern (torchdoctor/agent/checks/data/linter_codes.json `concerns`);
a file that does not parse is one finding, whatever line each syntax diagnostic names.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from torchdoctor.agent.checks.base import RawFinding
from torchdoctor.agent.checks.linters.evidence import concern_rules
from torchdoctor.agent.models import Evidence

NativeKey = tuple[str, str, int]
LINE_SLACK = 1
FILE_WIDE_CONCERNS = frozenset({"syntax-error"})
"""Concerns whose native finding stands for the whole file: Python stops at a file's first
syntax error, where ruff goes on reporting the lines after it."""


def native_key(finding: RawFinding) -> NativeKey:
    """How `merge_linter_evidence` names a native finding: (rule, file, line)."""
    return (finding.rule, finding.file, finding.line)


def merge_linter_evidence(
    native: Sequence[RawFinding], linter: Sequence[Evidence]
) -> tuple[dict[NativeKey, list[Evidence]], list[Evidence]]:
    """(linter evidence attached to native findings by `native_key`, evidence left standalone)."""
    by_file: dict[str, list[RawFinding]] = defaultdict(list)
    for finding in native:
        by_file[finding.file].append(finding)
    rules_of = concern_rules()
    attached: dict[NativeKey, list[Evidence]] = {}
    standalone: list[Evidence] = []
    for evidence in linter:
        target = _same_concern_nearby(evidence, by_file, rules_of)
        if target is None:
            standalone.append(evidence)
        else:
            attached.setdefault(native_key(target), []).append(evidence)
    return attached, standalone


def _same_concern_nearby(
    evidence: Evidence,
    by_file: dict[str, list[RawFinding]],
    rules_of: dict[str, frozenset[str]],
) -> RawFinding | None:
    concern = evidence.data.get("concern")
    line = evidence.line
    if not isinstance(concern, str) or evidence.file is None or line is None:
        return None
    rules = rules_of.get(concern, frozenset())
    candidates = [
        f
        for f in by_file.get(evidence.file, [])
        if f.rule in rules
        and (
            concern in FILE_WIDE_CONCERNS or f.line - LINE_SLACK <= line <= f.end_line + LINE_SLACK
        )
    ]
    return min(candidates, key=lambda f: abs(f.line - line), default=None)
