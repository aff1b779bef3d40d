"""loop-variable-after-loop: a container indexed, after its loop, by the loop's leftover key."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.patterns import terminal_name
from torchdoctor.agent.models import Severity

_BLOCKS = ("body", "orelse", "finalbody")


class LoopVariableAfterLoop(Rule):
    """Detects a container indexed, after a `for` loop over it has ended, by the loop's
    variable: `for k in losses: ...` and later `losses[k]` (also `for k, v in
    losses.items()`), outside any comprehension or loop that binds the name again.

    Why it matters: after the loop the variable keeps the last key, so `losses[k]` is the
    last entry, not the one the code means: a total logged as the last loss component, a
    metric read for one class only. The slip often sits beside a comprehension over the same
    container (`{k: losses[k].item() for k in losses}`), whose `k` does not leak in Python 3.
    dbolya/yolact fixed exactly this (`a814470`, "logging the last loss as total loss
    instead of the actual total": `losses[k]` -> `loss`).

    Not reported: loops that `break` (the variable names the element found), uses inside
    the loop or inside a comprehension/loop binding the name again, a name re-bound after
    the loop, containers other than the one iterated (`for i in range(n)` then `x[i]`).

    Example:
        for k in losses:
            loss_avgs[k].add(losses[k].item())
        ...
        log["total"] = losses[k].item()

    Fix: name what is meant: the total (`loss.item()`, `sum(losses.values())`), or the
    entry's own key.
    """

    id = "loop-variable-after-loop"
    point = 1
    severity = Severity.MEDIUM
    title = "Container indexed by a finished loop's variable"
    items: ClassVar[tuple[str, ...]] = ("1.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.For,)

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.For)
        bound = _key_and_container(node)
        if bound is None:
            return
        key, source = bound
        if f"{terminal_name(source)}[{key}]" not in ctx.source:
            return  # the container is never indexed by the key: the cheap common case
        if node.orelse or _breaks(node):
            return
        container = ast.unparse(source)
        for later in _following(ctx, node):
            stores = _stores(later, key)
            for use in _stale_uses(later, key, container):
                if any(store < (use.lineno, use.col_offset) for store in stores):
                    return  # bound again before this read (`_, _, idx = heappop(...)`)
                ctx.report(
                    self,
                    use,
                    f"`{ast.unparse(use)}` comes after the loop `for {key} in {container}` "
                    f"ended (line {node.lineno}): `{key}` still holds the last key, so this "
                    "reads the last entry only. Name the value meant (a total, the entry's "
                    "own key).",
                )
                return
            if _rebinds(later, key):
                return


def _key_and_container(loop: ast.For) -> tuple[str, ast.expr] | None:
    """'k' and `losses` for `for k in losses` and `for k, v in losses.items()`."""
    target, source = loop.target, loop.iter
    if (
        isinstance(target, ast.Tuple)
        and target.elts
        and isinstance(source, ast.Call)
        and isinstance(source.func, ast.Attribute)
        and source.func.attr == "items"
        and not source.args
    ):
        target, source = target.elts[0], source.func.value
    if isinstance(target, ast.Name) and isinstance(source, ast.Name | ast.Attribute):
        return target.id, source
    return None


def _breaks(loop: ast.For) -> bool:
    """A `break` of this loop (not of a loop nested in it)."""
    stack: list[ast.AST] = list(loop.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Break):
            return True
        if isinstance(node, ast.For | ast.While | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        stack.extend(ast.iter_child_nodes(node))
    return False


def _following(ctx: ModuleContext, loop: ast.For) -> list[ast.stmt]:
    """The statements after `loop` in its block."""
    parent = ctx.parents.get(loop)
    for field in _BLOCKS:
        block = getattr(parent, field, None)
        if isinstance(block, list) and loop in block:
            return block[block.index(loop) + 1 :]
    return []


def _stale_uses(statement: ast.stmt, key: str, container: str) -> list[ast.Subscript]:
    """`container[key]` read in `statement`, outside comprehensions and loops binding `key`."""
    found: list[ast.Subscript] = []
    stack: list[ast.AST] = [statement]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp) and any(
            _binds(gen.target, key) for gen in node.generators
        ):
            continue
        if isinstance(node, ast.For) and _binds(node.target, key):
            continue
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            continue
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.ctx, ast.Load)
            and isinstance(node.slice, ast.Name)
            and node.slice.id == key
            and ast.unparse(node.value) == container
        ):
            found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return sorted(found, key=lambda n: (n.lineno, n.col_offset))


def _binds(target: ast.AST, key: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == key for n in ast.walk(target))


def _rebinds(statement: ast.stmt, key: str) -> bool:
    """Whether `statement` binds `key` again (assignment, loop, `with ... as`), outside the
    comprehensions and functions that bind their own."""
    return bool(_stores(statement, key))


def _stores(statement: ast.stmt, key: str) -> list[tuple[int, int]]:
    """Where `statement` binds `key` again (line, column), outside the comprehensions and
    functions that bind their own."""
    found: list[tuple[int, int]] = []
    stack: list[ast.AST] = [statement]
    while stack:
        node = stack.pop()
        if isinstance(
            node,
            ast.ListComp
            | ast.SetComp
            | ast.DictComp
            | ast.GeneratorExp
            | ast.Lambda
            | ast.FunctionDef
            | ast.AsyncFunctionDef
            | ast.ClassDef,
        ):
            continue
        if isinstance(node, ast.Name) and node.id == key and isinstance(node.ctx, ast.Store):
            found.append((node.lineno, node.col_offset))
        stack.extend(ast.iter_child_nodes(node))
    return found
