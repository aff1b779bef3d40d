"""`--ignore`, `[tool.torchdoctor] ignore` and inline suppression for findings that come as
evidence (peer linters, instrumented runs), exactly as the static engine applies them to
native rules: by rule id, by whole tool (`bandit`), or `# torchdoctor: ignore[...]` on the line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torchdoctor.agent.checks.catalogue import matches, peer_rule_id, suppressed_inline, tool_of
from torchdoctor.agent.models import Evidence

TextOf = Callable[[str], str | None]


def evidence_rule(ev: Evidence) -> str | None:
    """The rule id this evidence would be (or confirms) as a finding."""
    spec = ev.data.get("finding")
    if isinstance(spec, dict) and isinstance(spec.get("rule"), str):
        return str(spec["rule"])
    code = ev.data.get("code")
    if ev.kind == "linter" and isinstance(code, str):
        return peer_rule_id(ev.source, code)
    return None


def wanted(ev: Evidence, ignore: frozenset[str], text_of: TextOf) -> bool:
    """False when the user silenced this evidence's rule (or its whole tool)."""
    rule = evidence_rule(ev)
    if rule is None:
        return ev.source not in ignore
    if matches(rule, ignore) or (tool_of(rule) is None and ev.source in ignore):
        return False
    if ev.file is None or ev.line is None:
        return True
    text = text_of(ev.file)
    if text is None:
        return True
    lines = text.splitlines()
    return not (0 < ev.line <= len(lines) and suppressed_inline(lines[ev.line - 1], rule))


def drop_silenced(
    pairs: Iterable[tuple[int, Evidence]], ignore: Iterable[str], text_of: TextOf
) -> list[tuple[int, Evidence]]:
    """The (point, evidence) pairs whose rule the user has not silenced."""
    names = frozenset(ignore)
    return [(point, ev) for point, ev in pairs if wanted(ev, names, text_of)]
