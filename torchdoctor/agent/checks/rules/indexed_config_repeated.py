"""indexed-config-repeated: a run of sibling calls reads one entry of a config list twice and
leaves the next one unread."""

from __future__ import annotations

import ast
from collections import Counter
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_MIN_RUN = 3  # two calls reading one entry say nothing of a progression


class IndexedConfigRepeated(Rule):
    """Detects consecutive statements that call the same callee (`self.layer1 =
    self.make_layer(block, 16, layers[0])`, `self.layer2 = self.make_layer(block, 32,
    layers[0], 2)`, `self.layer3 = self.make_layer(block, 64, layers[1], 2)`) where one
    argument reads constant entries of one sequence in order, one entry twice, and the entry
    that would complete the progression (`layers[2]`) is read nowhere in the function, while
    the other arguments of the two calls reading the same entry differ (the stages
    progress: 32 after 16 channels).

    Why it matters: it is the copy-paste slip of stage-by-stage model definitions: the second
    stage is built with the first stage's depth (or width, or stride) and the configuration's
    next entry is ignored, so `ResNet(block, [2, 2, 2])` and `[2, 4, 8]` build different
    models than they say, and nothing fails. yunjey/pytorch-tutorial's ResNet read
    `layers[0]` twice until `606d0aa`.

    Not reported: progressions without a repeat (torchvision's `layers[0]` ... `layers[3]`),
    sequences another argument of the run also reads (`conv(c[0], c[1])`, `conv(c[1],
    c[1])`: a layer that keeps its width),
    runs whose calls reading the same entry are otherwise identical (the same block stacked
    on purpose), runs of fewer than three calls, runs with more than one repeat (`ch[0],
    ch[0], ch[1], ch[1]`: a pattern), entries read through variables or loops
    (`strides[i]`), string keys, and sequences the function also reads through a slice, a
    negative or variable index, or whole (`for n in layers`), which may read the entry.

    Example:
        self.layer1 = self.make_layer(block, 16, layers[0])
        self.layer2 = self.make_layer(block, 32, layers[0], 2)
        self.layer3 = self.make_layer(block, 64, layers[1], 2)

    Fix: advance the index with the stage (`layers[1]`, `layers[2]`).
    """

    id = "indexed-config-repeated"
    point = 1
    severity = Severity.HIGH
    title = "Sibling calls read one config entry twice and skip the next"
    items: ClassVar[tuple[str, ...]] = ("1.1",)
    triggers = Triggers()

    def finish(self, ctx: ModuleContext) -> None:
        blocks: dict[int, list[ast.stmt]] = {}
        counts: Counter[int] = Counter()
        for statement in _indexing_statements(ctx):
            found = _block_of(ctx, statement)
            if found is not None:
                blocks[id(found)] = found
                counts[id(found)] += 1
        for key, block in blocks.items():
            if counts[key] < _MIN_RUN:
                continue  # a run needs that many calls reading a constant entry
            scope = ctx.enclosing_function(block[0]) or ctx.tree
            for run in _runs(block):
                self._check_run(ctx, scope, run)

    def _check_run(self, ctx: ModuleContext, fn: ast.AST, run: list[ast.Call]) -> None:
        slots: dict[str, list[tuple[str, int]]] = {}
        for call in run:
            for slot, value in _arguments(call):
                indexed = _constant_index(value)
                if indexed is not None:
                    slots.setdefault(slot, []).append(indexed)
        for slot, entries in slots.items():
            if len(entries) != len(run) or len({name for name, _ in entries}) != 1:
                continue
            name = entries[0][0]
            if any(
                (_constant_index(v) or ("", 0))[0] == name
                for call in run
                for other, v in _arguments(call)
                if other != slot
            ):
                continue  # `conv(c[0], c[1])`, `conv(c[1], c[1])`: in and out of one sequence
            indices = [index for _, index in entries]
            missing = _skipped_entry(indices)
            if missing is None:
                continue
            read = _entry_reads(ctx, fn, name)
            if read is None or missing in read:
                continue  # the entry may be read elsewhere in the function
            repeated = next(i for i, count in Counter(indices).items() if count == 2)
            first, second = (run[i] for i, index in enumerate(indices) if index == repeated)
            if _without_slot(first, slot) == _without_slot(second, slot):
                continue  # the same call twice: a block stacked on purpose
            ctx.report(
                self,
                second,
                f"`{name}[{repeated}]` is read here and by the call on line {first.lineno}, "
                f"while `{name}[{missing}]` is read nowhere in this function: this stage "
                f"takes another stage's setting; advance the index",
                data={"sequence": name, "repeated": repeated, "missing": missing},
            )
            return


def _indexing_statements(ctx: ModuleContext) -> list[ast.stmt]:
    """Statements whose value is a call given a constant entry of a sequence as an argument
    (`self.layer2 = self.make_layer(block, 32, layers[0], 2)`), from the module's node index."""
    found: dict[int, ast.stmt] = {}
    parents = ctx.parents
    for node in ctx.nodes_by_type().get(ast.Subscript, []):
        assert isinstance(node, ast.Subscript)
        index = node.slice
        if not (isinstance(index, ast.Constant) and type(index.value) is int):
            continue
        call = parents.get(node)
        if isinstance(call, ast.keyword):
            call = parents.get(call)
        if not isinstance(call, ast.Call) or node is call.func:
            continue
        statement = parents.get(call)
        if isinstance(statement, ast.Assign | ast.Expr | ast.AnnAssign) and statement.value is call:
            found[id(statement)] = statement
    return list(found.values())


def _block_of(ctx: ModuleContext, statement: ast.stmt) -> list[ast.stmt] | None:
    """The statement list that holds `statement` (a body, an else, a finally)."""
    owner = ctx.parents.get(statement)
    for field in ("body", "orelse", "finalbody"):
        block = getattr(owner, field, None)
        if isinstance(block, list) and any(s is statement for s in block):
            return block
    return None


def _statement_call(stmt: ast.stmt) -> ast.Call | None:
    value = stmt.value if isinstance(stmt, ast.Assign | ast.Expr | ast.AnnAssign) else None
    return value if isinstance(value, ast.Call) else None


def _runs(block: list[ast.stmt]) -> list[list[ast.Call]]:
    """Maximal runs of consecutive statements calling one callee, at least `_MIN_RUN` long."""
    runs: list[list[ast.Call]] = []
    current: list[ast.Call] = []
    callee = ""
    for stmt in block:
        call = _statement_call(stmt)
        name = ast.unparse(call.func) if call is not None else ""
        if call is not None and name == callee:
            current.append(call)
            continue
        if len(current) >= _MIN_RUN:
            runs.append(current)
        current, callee = ([call], name) if call is not None else ([], "")
    if len(current) >= _MIN_RUN:
        runs.append(current)
    return runs


def _arguments(call: ast.Call) -> list[tuple[str, ast.expr]]:
    """(slot, value): `#0` for the first positional argument, `name=` for keywords."""
    slots = [(f"#{i}", arg) for i, arg in enumerate(call.args)]
    slots += [(f"{k.arg}=", k.value) for k in call.keywords if k.arg is not None]
    return slots


def _constant_index(value: ast.expr) -> tuple[str, int] | None:
    """(`layers`, 0) of `layers[0]`."""
    if not isinstance(value, ast.Subscript):
        return None
    index = value.slice
    if not (
        isinstance(index, ast.Constant)
        and isinstance(index.value, int)
        and not isinstance(index.value, bool)
        and index.value >= 0
    ):
        return None
    return ast.unparse(value.value), index.value


def _skipped_entry(indices: list[int]) -> int | None:
    """The entry a monotone run with exactly one repeat leaves out (`0, 0, 1` -> 2,
    `0, 1, 1, 3` -> 2), or None."""
    if not (indices == sorted(indices) or indices == sorted(indices, reverse=True)):
        return None
    counts = Counter(indices)
    if sorted(counts.values()) != [1] * (len(counts) - 1) + [2]:
        return None
    low = min(indices)
    expected = set(range(low, low + len(indices)))
    if indices[0] > indices[-1]:  # counting down to 0: the missing entry lies below
        high = max(indices)
        expected = set(range(high - len(indices) + 1, high + 1))
    missing = expected - set(indices)
    if len(missing) != 1:
        return None
    entry = missing.pop()
    return entry if entry >= 0 else None


def _entry_reads(ctx: ModuleContext, fn: ast.AST, name: str) -> set[int] | None:
    """The constant entries of the sequence `name` the function reads (nested functions
    included), or None when it also reads it whole, by a slice or a variable index, or binds
    it again: then it may read any entry."""
    found: set[int] = set()
    last = name.rsplit(".", 1)[-1]
    for node in walk_tree(fn):
        if isinstance(node, ast.Name):
            if node.id != name:
                continue
        elif not (
            isinstance(node, ast.Attribute) and node.attr == last and ast.unparse(node) == name
        ):
            continue
        parent = ctx.parents.get(node)
        if isinstance(parent, ast.Subscript) and parent.value is node:
            indexed = _constant_index(parent)
            if indexed is None:
                return None
            found.add(indexed[1])
        elif not (
            isinstance(parent, ast.Call)
            and isinstance(parent.func, ast.Name)
            and parent.func.id == "len"
        ):
            return None  # read whole, bound again: any entry may be read
    return found


def _without_slot(call: ast.Call, slot: str) -> str:
    """The call's text with the argument at `slot` left out."""
    kept = [ast.unparse(v) for s, v in _arguments(call) if s != slot]
    return f"{ast.unparse(call.func)}({', '.join(kept)})"
