"""vocabulary-in-set-order: number the words of a sorted set, the same in every launch."""

from __future__ import annotations

import ast
import math

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext, dotted_name, scope_of
from torchdoctor.agent.fixes.models import FixKind, FixTarget, SmokeRun
from torchdoctor.sandbox.probes.determinism import RELATIVE_TOLERANCE


class VocabularyInSetOrderFix(Codemod):
    """Sorts the set the vocabulary is listed from: `list(set(words))`, `[*set(words)]` and a
    bare `set(words)` that is enumerated become `sorted(set(words))`. The words are strings,
    so sorting them is defined; the indices then follow the words, not the launch's string-hash
    seed. Indices change once (from one arbitrary order to a fixed one): a checkpoint saved
    with the old mapping was already tied to the launch that wrote it.

    Verified by the symptom: the fixed script's seeded run under PYTHONHASHSEED 0 and 1 records
    the same losses (the original's differ from the first step)."""

    rule = "vocabulary-in-set-order"
    kind = FixKind.CORRECTNESS
    summary = "sorted(set(...)): word indices the same in every launch"
    hash_order = True

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        if _binds_sorted(ctx.source):
            return ctx.decline("the module binds its own `sorted`: the builtin is not reachable")
        listed = _set_call(ctx, target)
        if listed is None:
            return ctx.decline("the set the finding names is not at its line")
        replaced = _listing(ctx, listed)
        sorting: cst.BaseExpression = listed
        if replaced is listed and not _numbered_directly(ctx, listed):
            # a set kept as a set (membership tests stay O(1)): sort where it is numbered
            numbered = _numbering_argument(ctx, target)
            if numbered is None:
                return ctx.decline(
                    "the set is numbered where this fix cannot sort it: sort it where it is built"
                )
            if _read_elsewhere(ctx, numbered, scope_of(ctx, listed)):
                return ctx.decline(
                    "the set is also iterated elsewhere: sorting one numbering would leave the "
                    "mappings disagreeing; sort it where it is built"
                )
            replaced = sorting = numbered
        ctx.substitute(replaced, cst.Call(func=cst.Name("sorted"), args=[cst.Arg(value=sorting)]))
        return True

    def symptom_gone(self, before: SmokeRun, after: SmokeRun) -> tuple[bool, str]:
        other = after.signals.other_hash_seed_losses
        if not isinstance(other, list) or not other or not after.losses:
            return False, "no losses under a second PYTHONHASHSEED to compare"
        agree = len(other) == len(after.losses) and all(
            math.isclose(a, b, rel_tol=RELATIVE_TOLERANCE)
            for a, b in zip(after.losses, other, strict=True)
        )
        if not agree:
            return False, "the fixed script's losses still change with PYTHONHASHSEED"
        return True, f"the same {len(other)} losses under PYTHONHASHSEED 0 and 1"


def _set_call(ctx: SourceContext, target: FixTarget) -> cst.Call | None:
    """The `set(...)` the rule named: on its anchor line, with the same code."""
    line = target.data.get("set_line")
    text = target.data.get("set")
    if not isinstance(line, int) or not isinstance(text, str):
        return None
    for call in ctx.find(cst.Call, where=lambda c: dotted_name(c.func) == "set"):
        if ctx.line(call) == line and _normalised(ctx.code(call)) == text:
            return call
    return None


def _numbered_directly(ctx: SourceContext, listed: cst.Call) -> bool:
    """`enumerate(set(...))`, `zip(set(...), range(n))`: the set is what is numbered."""
    holder = ctx.parent(listed)
    call = ctx.parent(holder) if isinstance(holder, cst.Arg) else None
    return (
        isinstance(call, cst.Call)
        and dotted_name(call.func) in ("enumerate", "zip")
        and call.args[0] is holder
    )


def _numbering_argument(ctx: SourceContext, target: FixTarget) -> cst.BaseExpression | None:
    """The first argument of the `enumerate(...)` / `zip(..., range(n))` at the finding that
    numbers the set's name."""
    indexed = target.data.get("indexed")
    for call in ctx.find(
        cst.Call, where=lambda c: dotted_name(c.func) in ("enumerate", "zip") and bool(c.args)
    ):
        first = call.args[0].value
        if ctx.line(call) == target.line and _normalised(ctx.code(first)) == indexed:
            return first
    return None


def _read_elsewhere(ctx: SourceContext, numbered: cst.BaseExpression, scope: cst.CSTNode) -> bool:
    """Whether the set's name is read in `scope` other than by the numbering, `len(name)`, a
    membership test or its own binding: another iteration would keep the set's order."""
    name = dotted_name(numbered)
    for node in ctx.find(cst.Name, inside=scope, where=lambda n: n.value == name):
        if node is numbered:
            continue
        holder = ctx.parent(node)
        call = ctx.parent(holder) if isinstance(holder, cst.Arg) else None
        if isinstance(holder, cst.AssignTarget):
            continue
        if isinstance(call, cst.Call) and dotted_name(call.func) == "len":
            continue
        if isinstance(holder, cst.ComparisonTarget) and isinstance(
            holder.operator, cst.In | cst.NotIn
        ):
            continue
        return True
    return False


def _normalised(code: str) -> str | None:
    try:
        return ast.unparse(ast.parse(code.strip(), mode="eval"))
    except SyntaxError:
        return None


def _listing(ctx: SourceContext, listed: cst.Call) -> cst.BaseExpression:
    """What lists the set: `list(set(...))`, `[*set(...)]`, or the set itself."""
    holder = ctx.parent(listed)
    outer = ctx.parent(holder) if holder is not None else None
    if (
        isinstance(holder, cst.Arg)
        and isinstance(outer, cst.Call)
        and dotted_name(outer.func) == "list"
        and len(outer.args) == 1
        and holder.star == ""
        and holder.keyword is None
    ):
        return outer
    if (
        isinstance(holder, cst.StarredElement)
        and isinstance(outer, cst.List)
        and len(outer.elements) == 1
    ):
        return outer
    return listed


def _binds_sorted(source: str) -> bool:
    """Whether the module binds the name `sorted` (assigned, defined or imported)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name) and node.id == "sorted" and isinstance(node.ctx, ast.Store):
            return True
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name == "sorted":
            return True
        if isinstance(node, ast.alias) and (node.asname or node.name) == "sorted":
            return True
    return False
