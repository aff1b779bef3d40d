"""A static-only audit without LangGraph: the audit graph's own nodes, in the order the graph
runs them when nothing is run, fixed, approved or asked of an LLM (what a pre-commit hook asks
for). Loading LangGraph costs more than auditing a file, and such an audit is redone faster
than it is resumed, so nothing is checkpointed, and its ledger is written once, whole, by
`summarize` rather than after each phase as well (a crash redoes the audit; the phases after
the evidence take milliseconds): each write renders the whole ledger and syncs it to disk.

Each node's update is folded into the state with the reducers `AuditState` declares, as
LangGraph folds it; the routes are the graph's own functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, cast, get_args, get_origin, get_type_hints

from torchdoctor.agent import graph as nodes
from torchdoctor.agent.context import AuditContext
from torchdoctor.agent.state import AuditState

if TYPE_CHECKING:
    from langgraph.runtime import Runtime

Reducer = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class NodeRuntime:
    """All the nodes read of LangGraph's `Runtime`: the run context."""

    context: AuditContext


@cache
def reducers() -> dict[str, tuple[Reducer, type]]:
    """Each reduced key of `AuditState`: its reducer and the empty value's type it starts from."""
    found: dict[str, tuple[Reducer, type]] = {}
    for key, hint in get_type_hints(AuditState, include_extras=True).items():
        metadata = getattr(hint, "__metadata__", ())
        if metadata and callable(metadata[0]):
            found[key] = (metadata[0], get_origin(get_args(hint)[0]))
    return found


def fold(state: dict[str, Any], update: dict[str, Any]) -> None:
    """`update` into `state`: reduced keys through their reducer, the others replaced."""
    known = reducers()
    for key, value in update.items():
        if key in known:
            reducer, empty = known[key]
            state[key] = reducer(state.get(key, empty()), value)
        else:
            state[key] = value


def run_static_path(first: dict[str, Any], context: AuditContext) -> AuditState:
    """The final state of the audit that starts from `first` (`audit_id`, `options`)."""
    runtime = cast("Runtime[AuditContext]", NodeRuntime(context))
    state: dict[str, Any] = dict(first)

    def view() -> AuditState:
        return cast(AuditState, state)

    def step(node: Callable[[AuditState, Runtime[AuditContext]], dict[str, Any]]) -> None:
        fold(state, node(view(), runtime))

    step(nodes.ingest)
    step(nodes.evidence)
    for phase in nodes.phases():
        step(phase.start)
        for update in [nodes.Phase.point(task, runtime) for task in phase.tasks(view())]:
            fold(state, update)
        step(phase.fix)
        while phase.after_fix(view()) == phase.name("fix"):
            step(phase.fix)
        step(phase.gate)
        if phase.route(view()) == phase.name("adopt"):
            step(phase.adopt)
        step(phase.ledger_passed)  # nothing is resumed: `summarize` writes the whole ledger
    step(nodes.summarize)
    step(nodes.approve)
    step(nodes.report)
    return view()
