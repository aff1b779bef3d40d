"""collected-list-unread: a list collected in a loop is never read; the last item is."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


class CollectedListUnread(Rule):
    """Detects a `for` loop that appends each item (or a part unpacked from it) to a list
    that nothing ever reads, while the code after the loop reads the item's variable:
    `s_prime_lst.append(s_prime)` in the loop, then `torch.tensor(s_prime)` after it.

    Why it matters: after the loop the variable holds the last item only; the batch built
    from it is one transition repeated (or broadcast) where the list of all of them was
    meant, and training goes on without an error. seungeunrho/minimalRL's actor-critic built
    its next-state batch from the last `s_prime` until `cabbd84` ("Make_batch method now
    returns proper value for s_prime").

    Not reported: a list that is read anywhere (returned, indexed, passed on, `len()`,
    `.pop()`), a variable carried from one iteration to the next (`x = layer(x)` then
    `fmap.append(x)`: after the loop `x` is the result of the whole chain), and a variable
    bound again between the loop and the read.

    Example:
        for transition in self.data:
            s, a, r, s_prime, done = transition
            s_lst.append(s)
            s_prime_lst.append(s_prime)
        s_prime_batch = torch.tensor(s_prime, dtype=torch.float)

    Fix: read the list (`torch.tensor(s_prime_lst, dtype=torch.float)`).
    """

    id = "collected-list-unread"
    point = 4
    severity = Severity.HIGH
    title = "List collected in a loop, its last item read instead"
    items: ClassVar[tuple[str, ...]] = ("4.2",)
    triggers = Triggers(("append",))

    def finish(self, ctx: ModuleContext) -> None:
        items: dict[ast.For, set[str]] = {}
        for statement in ctx.flow.nodes(ast.Expr):
            appended = _appended(statement)
            if appended is None:
                continue
            collected, name = appended
            uses = _uses(ctx)
            # the list's reads first: nearly every list is read (returned, passed on), and
            # that is one look at its uses, where the loop's names and the item's reads
            # after it walk the loop and every use of a name like `x`
            if _read_elsewhere(ctx, uses.get(collected, [])):
                continue
            loop = _loop_binding(ctx, statement, name, items)
            if loop is None:
                continue
            scope = _scope(ctx, loop)
            read = _read_after(ctx, uses.get(name, []), scope, loop)
            if read is None:
                continue
            ctx.report(
                self,
                read,
                f"`{collected}` collects every `{name}` of the loop at line {loop.lineno} "
                f"but is never read, and here, after the loop, `{name}` holds the last "
                f"item only: read `{collected}`",
                data={"list": collected, "item": name},
            )


def _appended(statement: ast.Expr) -> tuple[str, str] | None:
    """`LIST.append(NAME)` as a statement -> (LIST, NAME)."""
    call = statement.value
    if not isinstance(call, ast.Call) or len(call.args) != 1 or call.keywords:
        return None
    func, item = call.func, call.args[0]
    if not (isinstance(func, ast.Attribute) and func.attr == "append"):
        return None
    if isinstance(func.value, ast.Name) and isinstance(item, ast.Name):
        return func.value.id, item.id
    return None


def _loop_binding(
    ctx: ModuleContext, node: ast.AST, name: str, items: dict[ast.For, set[str]]
) -> ast.For | None:
    """The innermost `for` loop around `node` (in its scope) that binds `name` per item."""
    current = ctx.parents.get(node)
    while current is not None and not isinstance(current, _SCOPES):
        if isinstance(current, ast.For):
            if current not in items:
                items[current] = _per_item_names(current)
            return current if name in items[current] else None
        current = ctx.parents.get(current)
    return None


def _uses(ctx: ModuleContext) -> dict[str, list[ast.Name]]:
    """The module's names by identifier, built once for the rule."""
    table = ctx.memo_table("collected-list-unread.uses")
    if not table:
        for node in ctx.flow.nodes(ast.Name):
            table.setdefault(node.id, []).append(node)
        table[""] = []  # built, even for a module with no name
    return table


def _per_item_names(loop: ast.For) -> set[str]:
    """Names bound by the loop's target, or unpacked in its body from a target name
    (`s, a, r = transition`); not names the body binds from their own previous value."""
    targets = {n.id for n in walk_tree(loop.target) if isinstance(n, ast.Name)}
    names = set(targets)
    for statement in loop.body:
        if (
            isinstance(statement, ast.Assign)
            and isinstance(statement.value, ast.Name)
            and statement.value.id in targets
        ):
            for target in statement.targets:
                names |= {n.id for n in walk_tree(target) if isinstance(n, ast.Name)}
    carried = {
        n.id
        for statement in walk_tree(loop)
        if isinstance(statement, ast.Assign | ast.AugAssign)
        for target in (
            statement.targets if isinstance(statement, ast.Assign) else [statement.target]
        )
        for n in walk_tree(target)
        if isinstance(n, ast.Name) and statement.value is not None and _reads(statement.value, n.id)
    }
    return names - carried


def _reads(expr: ast.expr, name: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == name for n in walk_tree(expr))


def _scope(ctx: ModuleContext, node: ast.AST) -> ast.AST:
    current = ctx.parents.get(node)
    while current is not None and not isinstance(current, _SCOPES):
        current = ctx.parents.get(current)
    return current if current is not None else ctx.tree


def _in_scope(ctx: ModuleContext, node: ast.AST, scope: ast.AST) -> bool:
    return _scope(ctx, node) is scope


def _read_after(
    ctx: ModuleContext, uses: list[ast.Name], scope: ast.AST, loop: ast.For
) -> ast.Name | None:
    """The first read after the loop in its scope among `uses` (one name's), unless the name
    is bound again before it (an assignment, another loop, a `with ... as`)."""
    end = loop.end_lineno or loop.lineno
    first_read: ast.Name | None = None
    rebound = float("inf")
    for node in uses:
        if node.lineno <= end or not _in_scope(ctx, node, scope):
            continue
        if isinstance(node.ctx, ast.Load):
            if first_read is None or (node.lineno, node.col_offset) < (
                first_read.lineno,
                first_read.col_offset,
            ):
                first_read = node
        else:
            rebound = min(rebound, node.lineno)
    if first_read is None or first_read.lineno >= rebound:
        return None
    return first_read


def _read_elsewhere(ctx: ModuleContext, uses: list[ast.Name]) -> bool:
    """Whether the list (its `uses`) is read other than by `.append(...)` calls, anywhere in
    the module (a global read by another function counts)."""
    for node in uses:
        if not isinstance(node.ctx, ast.Load):
            continue
        parent = ctx.parents.get(node)
        if isinstance(parent, ast.Attribute) and parent.attr == "append":
            continue
        return True
    return False
