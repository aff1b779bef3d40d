"""vocabulary-in-set-order: word indices taken from the iteration order of a set of strings."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import nodes_of, walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import terminal_name
from torchdoctor.agent.models import Severity

_TEXT_METHODS = frozenset({"split", "read", "readlines", "lower", "strip", "splitlines"})
"""Calls whose result is text (or a list of it): what makes a set's elements strings."""


class VocabularyInSetOrder(Rule):
    """Detects a vocabulary whose indices come from the iteration order of a set of strings:
    `words = list(set(text.split()))` then `{w: i for i, w in enumerate(words)}` (or
    `dict(zip(words, range(...)))`, `words.index(w)`, or a loop filling a dict from
    `enumerate(words)`); also `enumerate(set(...))` directly.

    Why it matters: a set's order follows its elements' hashes, and Python salts the hashes of
    strings with a seed drawn at each launch (PYTHONHASHSEED). Every run numbers the words
    differently, so the embedding rows, the output classes and any saved checkpoint's mapping
    change from one launch to the next, and seeding torch does not make two runs agree. The
    determinism probe sees the result (two seeded runs that diverge at step 0); this rule sees
    the cause without a run.

    Not reported: `sorted(set(...))`, a list sorted before it is indexed, a name whose last
    binding before the index is something else, sets whose elements are not shown to be text
    (a set of ints iterates in a fixed order), and a set used only for membership or its size.

    Example:
        word_list = list(set(" ".join(sentences).split()))
        word_dict = {w: i for i, w in enumerate(word_list)}

    Fix: `word_list = sorted(set(" ".join(sentences).split()))`.
    """

    id = "vocabulary-in-set-order"
    point = 5
    severity = Severity.MEDIUM
    title = "Vocabulary indexed in set order"
    items: ClassVar[tuple[str, ...]] = ("5.1",)
    triggers = Triggers(("set(",))

    def applies(self, ctx: ModuleContext) -> bool:
        return "set(" in ctx.source and (
            "enumerate(" in ctx.source or ".index(" in ctx.source or "zip(" in ctx.source
        )

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        indexed = [
            (node, listed)
            for node in nodes_of(ctx, ast.Call)
            if isinstance(node, ast.Call) and (listed := _indexed(ctx, node)) is not None
        ]
        if not indexed:
            return  # nothing numbered: no need to know which names hold text
        texts = _text_names(ctx)
        bindings = _Bindings(ctx, texts)
        reported: set[int] = set()  # one finding per set, at its first numbering
        for node, listed in indexed:
            source = _text_set(listed, texts)
            if source is None and isinstance(listed, ast.Name):
                source = bindings.text_set_read(listed)
            if source is None or id(source) in reported:
                continue
            reported.add(id(source))
            ctx.report(
                self,
                node,
                f"`{ast.unparse(listed)}` lists a set of strings, whose order changes with every "
                "launch (Python salts string hashes: PYTHONHASHSEED): the indices given here "
                "differ from run to run, so embeddings, classes and checkpoints do not line up "
                f"and seeding torch does not help; build it from `sorted({ast.unparse(source)})`",
                data={
                    "set": ast.unparse(source),
                    "set_line": source.lineno,
                    "indexed": ast.unparse(listed),
                },
            )


def _text_set(node: ast.expr, texts: frozenset[str]) -> ast.Call | None:
    """`set(E)` / `list(set(E))` / `[*set(E)]` where E is shown to hold text."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if node.func.id == "list" and len(node.args) == 1 and not node.keywords:
            return _text_set(node.args[0], texts)
        if node.func.id == "set" and len(node.args) == 1 and _is_text(node.args[0], texts):
            return node
    if isinstance(node, ast.List) and len(node.elts) == 1 and isinstance(node.elts[0], ast.Starred):
        return _text_set(node.elts[0].value, texts)
    return None


def _text_names(ctx: ModuleContext) -> frozenset[str]:
    """Names some assignment binds to text (`tokens = handle.read().split()`): one step of
    evidence for a set built from a name."""
    return frozenset(
        node.targets[0].id
        for node in nodes_of(ctx, ast.Assign)
        if isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)
        and _is_text(node.value, frozenset())
    )


def _is_text(node: ast.expr, texts: frozenset[str]) -> bool:
    for inner in walk_tree(node):
        if isinstance(inner, ast.Constant) and isinstance(inner.value, str):
            return True
        if isinstance(inner, ast.Name) and inner.id in texts:
            return True
        if (
            isinstance(inner, ast.Call)
            and isinstance(inner.func, ast.Attribute)
            and inner.func.attr in _TEXT_METHODS
        ):
            return True
    return False


Binding = tuple[int, int, ast.Call | None]
"""(scope id, line, the text set it holds or None) of one `name = ...`."""


class _Bindings:
    """Where each name is bound in the module, and where it is sorted in place: which
    binding an index reads is the last one before it in its scope (`word_list = text.split()`
    then `word_list = list(set(word_list))` is the usual shape)."""

    def __init__(self, ctx: ModuleContext, texts: frozenset[str]) -> None:
        self.ctx = ctx
        self.bound: dict[str, list[Binding]] = {}
        self.sorted: dict[str, list[tuple[int, int]]] = {}
        for node in nodes_of(ctx, ast.Assign):
            assert isinstance(node, ast.Assign)
            if len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                held = _text_set(node.value, texts)
                entry = (self._scope(node), node.lineno, held)
                self.bound.setdefault(node.targets[0].id, []).append(entry)
        for node in nodes_of(ctx, ast.Call):
            assert isinstance(node, ast.Call)
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and func.attr == "sort"
                and isinstance(func.value, ast.Name)
            ):
                place = (self._scope(node), node.lineno)
                self.sorted.setdefault(func.value.id, []).append(place)

    def _scope(self, node: ast.AST) -> int:
        fn = self.ctx.enclosing_function(node)
        return id(fn) if fn is not None else 0

    def text_set_read(self, name: ast.Name) -> ast.Call | None:
        """The text set `name` holds where it is read, if its binding there is one."""
        scope, line = self._scope(name), name.lineno
        bindings = self.bound.get(name.id, [])
        before = [b for b in bindings if b[0] == scope and b[1] < line]
        if not before and scope:  # a function reading a module's name bound once
            before = [b for b in bindings if b[0] == 0] if len(bindings) == 1 else []
        if not before:
            return None
        where, bound_at, held = max(before, key=lambda b: b[1])
        sorts = self.sorted.get(name.id, [])
        if held is None or any(s == where and bound_at < at < line for s, at in sorts):
            return None
        return held


def _indexed(ctx: ModuleContext, call: ast.Call) -> ast.expr | None:
    """What `call` numbers by position into a mapping: X of `enumerate(X)` feeding a dict
    comprehension, `dict(...)`, or a loop that stores the index under the item; of
    `zip(X, range(...))`; or of `X.index(...)`."""
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr == "index" and len(call.args) == 1:
        return func.value
    if not isinstance(func, ast.Name) or not call.args:
        return None
    if func.id == "zip" and len(call.args) == 2:
        second = call.args[1]
        counts = isinstance(second, ast.Call) and terminal_name(second.func) in ("range", "count")
        return call.args[0] if counts else None
    if func.id != "enumerate" or len(call.args) != 1:
        return None
    parent = ctx.parents.get(call)
    if isinstance(parent, ast.comprehension) and isinstance(ctx.parents.get(parent), ast.DictComp):
        return call.args[0]
    if isinstance(parent, ast.Call) and terminal_name(parent.func) == "dict":
        return call.args[0]
    if isinstance(parent, ast.For) and parent.iter is call and _stores_index(parent):
        return call.args[0]
    return None


def _stores_index(loop: ast.For) -> bool:
    """`for i, w in enumerate(X): d[w] = i` (or `i + offset`, after reserved tokens)."""
    target = loop.target
    if not (isinstance(target, ast.Tuple) and len(target.elts) == 2):
        return False
    index, item = target.elts
    if not (isinstance(index, ast.Name) and isinstance(item, ast.Name)):
        return False
    return any(
        isinstance(stmt, ast.Assign)
        and isinstance(stmt.targets[0], ast.Subscript)
        and isinstance(stmt.targets[0].slice, ast.Name)
        and stmt.targets[0].slice.id == item.id
        and any(isinstance(n, ast.Name) and n.id == index.id for n in walk_tree(stmt.value))
        for stmt in loop.body
    )
