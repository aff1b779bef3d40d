"""The data-flow map of one step as a call tree: a markdown table and a Mermaid diagram.

The harness records module calls in order with their parent and, for each call, the earlier
calls its inputs and output derive from. This module turns that into what a reader expects of
a model diagram: parent -> children, siblings fed by the same tensor as branches, residual adds
and concatenations as merge nodes, repeated blocks collapsed to one (`Block × 12`, the first one
expanded), and so are a module called in a loop and a model called once per time step (a
char-RNN's step: 20 calls of the model, once). Both renderings keep to a size a reader can take
in; the full map stays in the JSON.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from torchdoctor.agent.evidence.probe_schema import DataFlow, FlowCall, TensorInfo

TABLE_MAX_ROWS = 60
MERMAID_MAX_NODES = 40
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


@dataclass
class FlowNode:
    """One module call and the calls made inside it, in order."""

    call: FlowCall
    children: list[FlowNode] = field(default_factory=list)

    @property
    def end(self) -> int:
        return self.call.end if self.call.end is not None else self._last_index()

    def _last_index(self) -> int:
        return self.children[-1].end if self.children else self.call.index


@dataclass
class FlowGroup:
    """Consecutive sibling calls of identical structure, shown once (the first expanded)."""

    members: list[FlowNode]

    @property
    def first(self) -> FlowNode:
        return self.members[0]

    @property
    def key(self) -> int:
        return self.first.call.index

    def contains(self, index: int) -> bool:
        return any(m.call.index <= index <= m.end for m in self.members)

    @property
    def chained(self) -> bool:
        """Each member feeds the next (a stack of blocks) rather than all reading one input."""
        return all(
            any(m.call.index <= s <= m.end for s in nxt.call.sources)
            for m, nxt in zip(self.members, self.members[1:], strict=False)
        )

    def label(self, *, linked: bool = True) -> str:
        """`h.0 … 11 (chained)` for a run of blocks, `cell (chained)` for one module called in
        a loop. Roots are not `linked`: provenance is tracked within one root call, so
        whether a model called per time step feeds itself is not known (its name alone)."""
        name = self.first.call.module
        if len(self.members) == 1:
            return name
        last = self.members[-1].call.module
        arrangement = f" ({'chained' if self.chained else 'parallel'})" if linked else ""
        if last == name:
            return f"{name}{arrangement}"
        common = _common_prefix(name, last)
        return f"{name} … {last[len(common) :]}{arrangement}"

    def short_label(self) -> str:
        """`attn`, or `h.0…11` for a collapsed run of `h.0` … `h.11`."""
        name = self.first.call.module
        last = self.members[-1].call.module
        if last == name:
            return _short(name)
        common = _common_prefix(name, last)
        stem = _short(common.rstrip(".")) + "." if common else ""
        return f"{stem}{name[len(common) :]}…{last[len(common) :]}"

    def type_label(self) -> str:
        count = f" × {len(self.members)}" if len(self.members) > 1 else ""
        return f"{self.first.call.type}{count}"


def _common_prefix(a: str, b: str) -> str:
    parts_a, parts_b = a.split("."), b.split(".")
    common: list[str] = []
    for x, y in zip(parts_a, parts_b, strict=False):
        if x != y:
            break
        common.append(x)
    return ".".join(common) + "." if common else ""


def build_tree(flow: DataFlow) -> list[FlowNode]:
    """Roots of the call tree; documents without `parent` fall back to nesting depth."""
    nodes = {call.index: FlowNode(call) for call in flow.calls}
    roots: list[FlowNode] = []
    stack: list[FlowNode] = []
    with_parents = any(call.parent is not None for call in flow.calls)
    for call in flow.calls:
        node = nodes[call.index]
        if with_parents:
            parent = nodes.get(call.parent) if call.parent is not None else None
        else:
            del stack[call.depth :]
            parent = stack[-1] if stack else None
            stack.append(node)
        (parent.children if parent is not None else roots).append(node)
    return roots


def _signature(node: FlowNode, memo: dict[int, object]) -> object:
    cached = memo.get(node.call.index)
    if cached is None:
        shapes = tuple((tuple(t.shape), t.dtype) for t in node.call.outputs)
        cached = (node.call.type, shapes, tuple(_signature(c, memo) for c in node.children))
        memo[node.call.index] = cached
    return cached


def group_children(node: FlowNode, memo: dict[int, object]) -> list[FlowGroup]:
    return group_calls(node.children, memo)


def group_calls(nodes: list[FlowNode], memo: dict[int, object]) -> list[FlowGroup]:
    """Consecutive calls of identical structure as one group: the blocks of a stack, or a
    module called once per time step (the roots of a step too)."""
    groups: list[FlowGroup] = []
    for child in nodes:
        if groups and _signature(groups[-1].first, memo) == _signature(child, memo):
            groups[-1].members.append(child)
        else:
            groups.append(FlowGroup([child]))
    return groups


def _producers(groups: list[FlowGroup], sources: list[int], external: bool) -> list[int | None]:
    """The sibling groups (by key) a value derives from; None stands for the parent's input."""
    found: list[int | None] = []
    for source in sources:
        owner = next((g.key for g in groups if g.contains(source)), None)
        if owner not in found:
            found.append(owner)
    if (external or not found) and None not in found:
        found.insert(0, None)
    return found


# --- markdown ---------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    text = _CONTROL.sub(" ", text)
    for raw, safe in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ("|", "\\|"), ("`", "'")):
        text = text.replace(raw, safe)
    return text


def _tensors(tensors: list[TensorInfo]) -> str:
    shown = ", ".join(f"{list(t.shape)} {t.dtype} {t.device}" for t in tensors)
    return _md_cell(shown) or "-"


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _table_rows(node: FlowNode, depth: int, limit: int, memo: dict[int, object]) -> Iterator[str]:
    groups = group_children(node, memo)
    names = {g.key: g.short_label() for g in groups}
    for group in groups:
        call = group.first.call
        origin = _producers(groups, call.sources, call.external)
        feeds = " + ".join(names[p] if p is not None else "input" for p in origin)
        indent = "&nbsp;&nbsp;" * depth
        yield (
            f"| {call.index} | {indent}`{_md_cell(group.label())}` | "
            f"{_md_cell(group.type_label())} | {_md_cell(feeds)} | {_tensors(call.inputs)} | "
            f"{_tensors(call.outputs)} | {_md_cell(', '.join(call.param_dtypes)) or '-'} |"
        )
        if depth + 1 < limit:
            yield from _table_rows(group.first, depth + 1, limit, memo)


def _root_rows(roots: list[FlowNode], limit: int, memo: dict[int, object]) -> list[str]:
    rows: list[str] = []
    for group in group_calls(roots, memo):
        call = group.first.call
        rows.append(
            f"| {call.index} | `{_md_cell(group.label(linked=False))}` | "
            f"{_md_cell(group.type_label())} | input | {_tensors(call.inputs)} | "
            f"{_tensors(call.outputs)} | "
            f"{_md_cell(', '.join(call.param_dtypes)) or '-'} |"
        )
        if limit > 1:
            rows.extend(_table_rows(group.first, 1, limit, memo))
    return rows


def _deepest_fitting(roots: list[FlowNode], cap: int, count: Callable[[int], int]) -> int:
    """The largest depth limit whose rendering stays within `cap` (at least the first level)."""
    depth = max((c.depth for r in roots for c in _walk(r)), default=0) + 1
    limit = 2
    for candidate in range(2, depth + 1):
        if count(candidate) > cap:
            break
        limit = candidate
    return limit


def _walk(node: FlowNode) -> Iterator[FlowCall]:
    yield node.call
    for child in node.children:
        yield from _walk(child)


def render_dataflow_markdown(flow: DataFlow) -> str:
    """The call tree as a table, repeated blocks collapsed, as deep as fits TABLE_MAX_ROWS."""
    roots = build_tree(flow)
    if not roots:
        return ""
    memo: dict[int, object] = {}
    limit = _deepest_fitting(roots, TABLE_MAX_ROWS, lambda d: len(_root_rows(roots, d, memo)))
    rows = _root_rows(roots, limit, memo)[:TABLE_MAX_ROWS]
    header = [
        "| # | module | type | from | inputs | outputs | params |",
        "|---|---|---|---|---|---|---|",
    ]
    hidden = len(flow.calls) - len(rows)
    if hidden > 0 or flow.truncated:
        more = " (and more: the harness's cap was reached)" if flow.truncated else ""
        rows.append(f"| … | {hidden} more calls in the JSON report{more} | | | | | |")
    return "\n".join(header + rows)


# --- mermaid ----------------------------------------------------------------------------------


def _mermaid_text(text: str) -> str:
    text = _CONTROL.sub(" ", text)
    for raw, safe in (('"', "#quot;"), ("<", "#lt;"), (">", "#gt;"), ("`", "'")):
        text = text.replace(raw, safe)
    return text


def _edge_label(tensors: list[TensorInfo]) -> str:
    if not tensors:
        return ""
    t = tensors[0]
    return _mermaid_text(f"{'x'.join(map(str, t.shape))} {t.dtype}")


class _Mermaid:
    def __init__(self, limit: int, memo: dict[int, object]) -> None:
        self.limit = limit
        self.memo = memo
        self.lines: list[str] = []
        self.nodes = 0

    def container(self, node: FlowNode, depth: int, indent: str) -> None:
        """Draw `node`'s children between its input and output nodes."""
        key = node.call.index
        groups = group_children(node, self.memo)
        entries: dict[int, str] = {}
        exits: dict[int | None, str] = {}
        outputs: dict[int | None, list[TensorInfo]] = {None: node.call.inputs}
        for group in groups:
            gkey = group.key
            outputs[gkey] = group.members[-1].call.outputs
            expand = bool(group.first.children) and depth + 1 < self.limit
            title = _mermaid_text(f"{group.label()}: {group.type_label()}")
            if expand:
                self.nodes += 2
                self.lines.append(f'{indent}subgraph s{gkey}["{title}"]')
                self.lines.append(f"{indent}  in{gkey}(( ))")
                self.container(group.first, depth + 1, indent + "  ")
                self.lines.append(f"{indent}  out{gkey}(( ))")
                self.lines.append(f"{indent}end")
                entries[gkey], exits[gkey] = f"in{gkey}", f"out{gkey}"
            else:
                self.nodes += 1
                device = group.first.call.outputs[0].device if group.first.call.outputs else ""
                short = _mermaid_text(group.short_label())
                type_label = _mermaid_text(group.type_label())
                self.lines.append(
                    f'{indent}n{gkey}["{short}<br/>{type_label} {_mermaid_text(device)}"]'
                )
                entries[gkey] = exits[gkey] = f"n{gkey}"
        exits_of: dict[int | None, str] = {**exits, None: f"in{key}"}
        for group in groups:
            call = group.first.call
            origin = _producers(groups, call.sources, call.external)
            self._connect(origin, exits_of, outputs, entries[group.key], indent, f"m{group.key}")
        origin = _producers(groups, node.call.output_sources, node.call.output_external)
        # Several output tensors (a tuple of heads) are collected, not combined: no merge node.
        merge = f"mo{key}" if len(node.call.outputs) <= 1 else None
        self._connect(origin, exits_of, outputs, f"out{key}", indent, merge)

    def _connect(
        self,
        origin: list[int | None],
        exits: dict[int | None, str],
        outputs: dict[int | None, list[TensorInfo]],
        target: str,
        indent: str,
        merge: str | None,
    ) -> None:
        """Edges from the producers to `target`, through a merge node when several values
        are combined into one (a residual add, a concatenation)."""
        if len(origin) == 1 or merge is None:
            for producer in origin:
                self._edge(exits[producer], target, _edge_label(outputs[producer]), indent)
            return
        self.nodes += 1
        self.lines.append(f'{indent}{merge}(("merge"))')
        for producer in origin:
            self._edge(exits[producer], merge, _edge_label(outputs[producer]), indent)
        self.lines.append(f"{indent}{merge} --> {target}")

    def _edge(self, source: str, target: str, label: str, indent: str) -> None:
        arrow = f"-->|{label}|" if label else "-->"
        self.lines.append(f"{indent}{source} {arrow} {target}")


def _mermaid_for(roots: list[FlowNode], limit: int, memo: dict[int, object]) -> _Mermaid:
    drawing = _Mermaid(limit, memo)
    drawing.lines.append("flowchart TD")
    for group in group_calls(roots, memo):
        root = group.first
        key = root.call.index
        title = _mermaid_text(f"{group.label(linked=False)}: {group.type_label()}")
        shape = _edge_label(root.call.inputs) or "-"
        drawing.lines.append(f'  in{key}(["{title} input: {shape}"])')
        drawing.container(root, 1, "  ")
        drawing.lines.append(f'  out{key}(["output: {_edge_label(root.call.outputs) or "-"}"])')
        drawing.nodes += 2
    return drawing


def render_dataflow_mermaid(flow: DataFlow) -> str:
    """The call tree as a flowchart: subgraphs for expanded modules, merges for adds/concats,
    as deep as fits MERMAID_MAX_NODES."""
    roots = build_tree(flow)
    if not roots:
        return ""
    memo: dict[int, object] = {}
    limit = _deepest_fitting(roots, MERMAID_MAX_NODES, lambda d: _mermaid_for(roots, d, memo).nodes)
    return "\n".join(_mermaid_for(roots, limit, memo).lines)
