"""One finding per problem: a run finding on the same code as a static finding of the same
problem becomes that finding's evidence (its status is then the static finding's status).
A run finding the run could not place (seeded runs that differ with the string hash seed)
joins the static finding that names its cause (`vocabulary-in-set-order`): in the run's
script, else the project's only one.

`probe-graph-retention` at `total += loss` and the static `loss-graph-accumulation` at that
line are one problem seen twice; the report shows one finding backed by the rule and the run.
Which native rules a probe rule confirms is data (`checks/data/probe_rules.json` `confirms`).
"""

from __future__ import annotations

from collections.abc import Iterable

from torchdoctor.agent.checks.base import RawFinding
from torchdoctor.agent.checks.catalogue import catalogue
from torchdoctor.agent.checks.registry import rules_by_id
from torchdoctor.agent.models import Evidence
from torchdoctor.agent.reasoning.offline import attach_key

LINE_SLACK = 1


def attach_run_confirmations(
    native: Iterable[RawFinding], pairs: Iterable[tuple[int, Evidence]]
) -> list[tuple[int, Evidence]]:
    """The (point, evidence) pairs with run findings that confirm a native finding turned into
    attachments to it (moved to the native rule's point, where the reasoner attaches them)."""
    known = catalogue()
    points = {rule_id: rule.point for rule_id, rule in rules_by_id().items()}
    static = list(native)
    out: list[tuple[int, Evidence]] = []
    for point, ev in pairs:
        spec = ev.data.get("finding")
        entry = known.get(str(spec.get("rule"))) if isinstance(spec, dict) else None
        target = _confirmed(ev, entry.confirms, static) if entry and entry.kind == "probe" else None
        if target is None and entry and ev.data.get("unlocated"):
            named = set(ev.data.get("also_confirms", ()))
            target = _placed(ev.file, [f for f in static if f.rule in named])
        if target is None:
            out.append((point, ev))
            continue
        data = {k: v for k, v in ev.data.items() if k != "finding"}
        data["attach_to"] = attach_key(target.rule, target.file, target.line)
        data["confirms"] = target.rule
        out.append((points[target.rule], ev.model_copy(update={"data": data})))
    return out


def _confirmed(ev: Evidence, rules: tuple[str, ...], static: list[RawFinding]) -> RawFinding | None:
    if not rules or ev.file is None or ev.line is None:
        return None
    line = ev.line
    candidates = [
        f
        for f in static
        if f.rule in rules
        and f.file == ev.file
        and f.line - LINE_SLACK <= line <= f.end_line + LINE_SLACK
    ]
    return min(candidates, key=lambda f: abs(f.line - line), default=None)


def _placed(script: str | None, found: list[RawFinding]) -> RawFinding | None:
    """Where a run finding the run could not place belongs, among the findings of the rules
    its cause names (`also_confirms`): the first in the run's script, else the project's only
    one (a vocabulary built in a module the script imports). None when that is ambiguous."""
    in_script = sorted((f for f in found if f.file == script), key=lambda f: f.line)
    if in_script:
        return in_script[0]
    return found[0] if len(found) == 1 else None
