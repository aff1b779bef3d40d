"""A run's evidence is written by the code that ran: untrusted input, checked before use.

The probes harness runs inside the sandbox next to the audited script, which can rewrite its
evidence file at will. So the document is bounded (bytes, nesting, string lengths, list sizes)
before it is parsed and schema-validated; every location it names must be an audited file and
a line that exists there, else the finding is dropped with a note; and run-only evidence
cannot make a finding more severe than a configured ceiling (`run-max-severity`, default
high) unless it is confirmed, by a static finding on the same checkpoint, file and line, or
by the same probe finding in a second run.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import ValidationError

from torchdoctor.agent.checks.engine import StaticResult
from torchdoctor.agent.escape import one_line
from torchdoctor.agent.evidence.probe_schema import ProbeDocument
from torchdoctor.agent.models import Evidence, Severity

MAX_DOCUMENT_BYTES = 4_000_000
MAX_STRING_CHARS = 50_000
MAX_LIST_ITEMS = 20_000
MAX_DEPTH = 32


class UntrustedEvidence(ValueError):
    """The evidence document is too large, too deep, not JSON or not the schema."""


def _check_bounds(value: Any, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise UntrustedEvidence(f"nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
        raise UntrustedEvidence(f"a string of {len(value)} characters (limit {MAX_STRING_CHARS})")
    if isinstance(value, list):
        if len(value) > MAX_LIST_ITEMS:
            raise UntrustedEvidence(f"a list of {len(value)} items (limit {MAX_LIST_ITEMS})")
        for item in value:
            _check_bounds(item, depth + 1)
    elif isinstance(value, dict):
        if len(value) > MAX_LIST_ITEMS:
            raise UntrustedEvidence(f"an object of {len(value)} keys (limit {MAX_LIST_ITEMS})")
        for key, item in value.items():
            _check_bounds(key, depth + 1)
            _check_bounds(item, depth + 1)


def parse_document(raw: bytes) -> ProbeDocument:
    """The harness document, bounded and schema-validated, or `UntrustedEvidence`."""
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise UntrustedEvidence(
            f"{len(raw) / 1e6:.1f} MB exceeds the {MAX_DOCUMENT_BYTES / 1e6:.0f} MB limit"
        )
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise UntrustedEvidence(f"not JSON: {one_line(err)[:200]}") from None
    _check_bounds(data)
    try:
        return ProbeDocument.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = one_line(".".join(str(p) for p in first["loc"]))[:120]
        raise UntrustedEvidence(
            f"not the schema ({err.error_count()} error(s), first at {where!r}: {first['msg']})"
        ) from None


def located_in(text_of: Callable[[str], str | None], file: str | None, line: int | None) -> bool:
    """Whether `file` is an audited file and `line` one of its lines."""
    if not file:
        return False
    text = text_of(file)
    if text is None:
        return False
    return line is None or 1 <= line <= max(1, len(text.splitlines()))


def _finding_spec(evidence: Evidence) -> dict[str, Any] | None:
    spec = evidence.data.get("finding")
    return spec if isinstance(spec, dict) else None


def vet_locations(
    pairs: list[tuple[int, Evidence]], text_of: Callable[[str], str | None]
) -> tuple[list[tuple[int, Evidence]], list[str]]:
    """Drop run evidence that names a file that is not audited or a line it does not have."""
    kept: list[tuple[int, Evidence]] = []
    notes: list[str] = []
    for point, evidence in pairs:
        if located_in(text_of, evidence.file, evidence.line):
            kept.append((point, evidence))
            continue
        where = f"{evidence.file}:{evidence.line}" if evidence.line else f"{evidence.file}"
        notes.append(
            f"run evidence dropped: it names {one_line(where)[:200]!r}, not a line of an "
            "audited file"
        )
    return kept, notes


def _key(point: int, evidence: Evidence) -> tuple[int, str, str | None, int | None]:
    spec = _finding_spec(evidence) or {}
    return point, str(spec.get("rule", "")), evidence.file, evidence.line


def cap_run_severity(
    pairs: list[tuple[int, Evidence]], static: StaticResult, ceiling: Severity
) -> tuple[list[tuple[int, Evidence]], list[str]]:
    """Findings proposed by run evidence alone, above `ceiling`, come down to it unless a
    static finding (same file and line) or a second run (same probe finding) confirms them."""
    static_at = {(f.file, f.line) for r in static.files for f in r.findings}
    static_at |= {(f.file, f.line) for f in static.project_findings}
    seen = Counter(_key(p, e) for p, e in pairs if _finding_spec(e) is not None)
    capped: list[tuple[int, Evidence]] = []
    notes: list[str] = []
    for point, evidence in pairs:
        spec = _finding_spec(evidence)
        if spec is None or Severity(spec["severity"]).rank <= ceiling.rank:
            capped.append((point, evidence))
            continue
        if (evidence.file, evidence.line) in static_at:
            how = "confirmed by a static finding at the same line"
        elif seen[_key(point, evidence)] > 1:
            how = "confirmed by a second run"
        else:
            how = None
        if how is not None:
            message = f"{evidence.message} ({how})"
            capped.append((point, evidence.model_copy(update={"message": message})))
            continue
        lowered = {**spec, "severity": ceiling.value}
        message = (
            f"{evidence.message} (run-only evidence: {spec['severity']} lowered to "
            f"{ceiling.value} until a static finding or a second run confirms it)"
        )
        data = {**evidence.data, "finding": lowered}
        capped.append((point, evidence.model_copy(update={"message": message, "data": data})))
        notes.append(f"{spec['rule']} at {evidence.file}:{evidence.line}: {message}")
    return capped, notes


def vet_run_evidence(
    pairs: Iterable[tuple[int, Evidence]],
    text_of: Callable[[str], str | None],
    static: StaticResult,
    ceiling: Severity,
) -> tuple[list[tuple[int, Evidence]], list[str]]:
    """Both checks, locations first."""
    located, notes = vet_locations(list(pairs), text_of)
    capped, more = cap_run_severity(located, static, ceiling)
    return capped, notes + more
