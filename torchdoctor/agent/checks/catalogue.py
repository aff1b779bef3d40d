"""One namespace of rule ids: native rules, probe rules (instrumented runs) and peer rules.

Every id a finding can carry is here, so `rules`, `--select/--ignore`, `[tool.torchdoctor]`
and `# torchdoctor: ignore[...]` treat them alike. Peer rules are `<tool>-<code>` (e.g.
`bandit-b102`) with the tool's own text and a link (`data/peer_rules.json`, generated from
the installed tools by `scripts/peer_rules.py`); a whole tool is named by its name (`bandit`).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from functools import cache
from typing import Literal

from pydantic import BaseModel, ConfigDict

from torchdoctor.agent.checks.data import load_table
from torchdoctor.agent.checks.linters.evidence import classify
from torchdoctor.agent.checks.registry import all_rules, names_rule, rule_doc
from torchdoctor.agent.models import Severity

RuleKind = Literal["native", "probe", "peer"]
PEER_TOOLS = ("torchfix", "ruff", "bandit", "detect-secrets", "pip-audit", "mypy")
# tools whose codes are an open set (vulnerability ids, mypy's codes of future versions)
OPEN_CODE_TOOLS = ("pip-audit", "mypy")
_SLUG = re.compile(r"[^a-z0-9]+")


class CatalogueRule(BaseModel):
    """What `torchdoctor rules ID` says about any rule, whoever reports it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    kind: RuleKind
    tool: str
    point: int | None
    severity: Severity | None
    title: str
    doc: str
    link: str = ""
    tier: Literal["default", "opt-in"] = "default"
    items: tuple[str, ...] = ()
    severity_note: str = ""
    confirms: tuple[str, ...] = ()
    """Native rules reporting the same problem (probe rules): a run finding merges into them."""


def peer_rule_id(tool: str, code: str) -> str:
    """`bandit`, `B102` -> `bandit-b102`; the id a peer's finding carries."""
    slug = _SLUG.sub("-", code.lower()).strip("-")
    return f"{tool}-{slug}".strip("-")


@cache
def catalogue() -> dict[str, CatalogueRule]:
    """Every known rule id -> its entry (native first, then probe, then peer rules)."""
    found: dict[str, CatalogueRule] = {}
    for rule in all_rules():
        found[rule.id] = CatalogueRule(
            id=rule.id,
            kind="native",
            tool="torchdoctor",
            point=rule.point,
            severity=rule.severity,
            title=rule.title,
            doc=rule_doc(rule),
            tier=rule.tier,
            items=tuple(rule.items),
            severity_note=rule.severity_note,
        )
    for rule_id, entry in load_table("advice_rules.json")["rules"].items():
        found[rule_id] = CatalogueRule(
            id=rule_id,
            kind="native",
            tool="torchdoctor",
            point=entry["point"],
            severity=entry["severity"],
            title=entry["title"],
            doc=entry["doc"],
            items=tuple(entry["items"]),
        )
    for rule_id, entry in load_table("probe_rules.json")["rules"].items():
        found[rule_id] = CatalogueRule(
            id=rule_id,
            kind="probe",
            tool="torchdoctor-probes",
            point=entry["point"],
            severity=entry["severity"],
            title=entry["title"],
            doc=entry["doc"],
            items=tuple(entry["items"]),
            confirms=tuple(entry.get("confirms", ())),
        )
    for entry in load_table("peer_rules.json")["rules"]:
        rule_id = peer_rule_id(entry["tool"], entry["code"])
        info = classify(entry["tool"], entry["code"])
        found.setdefault(
            rule_id,
            CatalogueRule(
                id=rule_id,
                kind="peer",
                tool=entry["tool"],
                point=info.point,
                severity=info.severity,
                title=entry["title"],
                doc=entry["doc"],
                link=entry["link"],
                items=info.items,
            ),
        )
    return found


def tool_of(rule_id: str) -> str | None:
    """The peer tool a rule id belongs to (`bandit-b102` -> `bandit`), None for native ids."""
    entry = catalogue().get(rule_id)
    if entry is not None:
        return entry.tool if entry.kind == "peer" else None
    return next((t for t in OPEN_CODE_TOOLS if rule_id.startswith(f"{t}-")), None)


def is_known(name: str) -> bool:
    """A rule id, a whole tool, a point number or `all` (what select/ignore accept)."""
    if name in catalogue() or name in PEER_TOOLS or name == "all":
        return True
    if name.isdigit() and 1 <= int(name) <= 12:
        return True
    return any(
        name.startswith(f"{tool}-") and len(name) > len(tool) + 1 for tool in OPEN_CODE_TOOLS
    )


def closest(name: str, limit: int = 3) -> list[str]:
    """The known names nearest to a mistyped one (difflib), best first."""
    names = [*catalogue(), *PEER_TOOLS]
    return difflib.get_close_matches(name, names, n=limit, cutoff=0.6)


def unknown_names_message(names: Iterable[str], where: str) -> str | None:
    """A one-line usage error for unknown rule ids in `where`, with suggestions; else None."""
    unknown = [n for n in dict.fromkeys(names) if not is_known(n)]
    if not unknown:
        return None
    parts = []
    for name in unknown:
        near = closest(name)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        parts.append(f"{name!r}{hint}")
    return f"unknown rule id(s) in {where}: {'; '.join(parts)} — see `torchdoctor rules`"


def matches(rule_id: str, names: frozenset[str]) -> bool:
    """Whether a select/ignore list names this rule: by id, by its tool, by its checklist
    point's number, or by `all`."""
    known = catalogue().get(rule_id)
    if names_rule(rule_id, known.point if known else None, names):
        return True
    tool = tool_of(rule_id)
    return tool is not None and tool in names


def suppressed_inline(line_text: str, rule_id: str) -> bool:
    """`# torchdoctor: ignore` or `# torchdoctor: ignore[a, b]` naming the rule or its tool."""
    marker = "# torchdoctor: ignore"
    if marker not in line_text:
        return False
    rest = line_text.partition(marker)[2]
    if not rest.startswith("["):
        return True
    named = frozenset(n.strip() for n in rest[1:].split("]")[0].split(","))
    return rule_id in named or (tool_of(rule_id) or "\0") in named
