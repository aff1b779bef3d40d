"""checkpoint-path-reused: two different objects saved to the same file, one after the other."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_scope, walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity


class CheckpointPathReused(Rule):
    """Detects `torch.save(a, path)` followed, in the same block, by `torch.save(b, path)`
    with another object `b` and the same path written the same way (a literal, or an
    expression none of whose names changes in between): the copy-paste slip of a save
    method that writes each network to its own file
    (`torch.save(self.q2.state_dict(), "q1.pth")`).

    Why it matters: the second save overwrites the first file. The first network's weights
    are lost without any error, and loading later restores the second network's weights
    into the first (or fails on mismatched keys) — discovered only when a run is resumed or
    evaluated.

    Not reported: saves to paths that differ in any way, a path whose names are rebound
    between the two saves or passed to a call in between (the first file is read or
    converted before the second save replaces it), saves in different branches or in a
    loop (one call), and the same object saved twice.

    Example:
        torch.save(self.q_net1.state_dict(), "./model/q_net1.pth")
        torch.save(self.q_net2.state_dict(), "./model/q_net1.pth")

    Fix: give each object its own file (`"./model/q_net2.pth"`), or save one dict holding
    both state dicts.
    """

    id = "checkpoint-path-reused"
    point = 5
    severity = Severity.HIGH
    title = "Two objects saved to the same file"
    items: ClassVar[tuple[str, ...]] = ("5.1",)
    triggers = Triggers(("save(",))

    def applies(self, ctx: ModuleContext) -> bool:
        return ctx.source.count("save(") >= 2

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx) or not _saves_side_by_side(ctx):
            return
        blocks: list[list[ast.stmt]] = []
        for node in walk_tree(ctx.tree):
            for field in ("body", "orelse", "finalbody"):
                inner = getattr(node, field, None)
                if isinstance(inner, list) and inner and isinstance(inner[0], ast.stmt):
                    blocks.append(inner)
        for block in blocks:
            if sum(_saves_a_tensor(ctx, stmt) for stmt in block) >= 2:
                self._check_block(ctx, block)

    def _check_block(self, ctx: ModuleContext, block: list[ast.stmt]) -> None:
        saves: list[tuple[ast.Call, str, str]] = []  # (call, object, path)
        for stmt in block:
            if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
                _forget_rebound(saves, stmt)
                _forget_read(saves, stmt)
                continue
            call = stmt.value
            if ctx.flow.qualname_of(call) != "torch.save" or len(call.args) < 2:
                _forget_rebound(saves, stmt)
                _forget_read(saves, stmt)
                continue
            obj, path = ast.unparse(call.args[0]), ast.unparse(call.args[1])
            earlier = next((s for s in saves if s[2] == path and s[1] != obj), None)
            if earlier is not None:
                ctx.report(
                    self,
                    call,
                    f"`{obj}` is saved to `{path}`, the file line {earlier[0].lineno} just "
                    f"wrote `{earlier[1]}` to: the second save overwrites the first; give "
                    "each its own path",
                )
            saves.append((call, obj, path))


def _saves_side_by_side(ctx: ModuleContext) -> bool:
    """Two `_saves_a_tensor` statements under one parent, from the module's call index: a
    block needs two to compare, and most modules that save do so once per block, so their
    blocks are not listed at all."""
    parents: set[int] = set()
    for call in ctx.flow.calls_to(("torch.save",)):
        stmt = ctx.parents.get(call)
        if isinstance(stmt, ast.Expr) and len(call.args) >= 2:
            holder = id(ctx.parents.get(stmt))
            if holder in parents:
                return True
            parents.add(holder)
    return False


def _saves_a_tensor(ctx: ModuleContext, stmt: ast.stmt) -> bool:
    """`torch.save(obj, path)` as a statement: a block with fewer than two has nothing to
    compare, and is not followed statement by statement."""
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Call)
        and len(stmt.value.args) >= 2
        and ctx.flow.qualname_of(stmt.value) == "torch.save"
    )


def _forget_rebound(saves: list[tuple[ast.Call, str, str]], stmt: ast.stmt) -> None:
    """Drop the saves whose path mentions a name `stmt` binds (`path = ...` between them)."""
    if not saves:
        return
    bound = {
        n.id for n in walk_scope(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
    }
    if bound:
        saves[:] = [s for s in saves if not any(name in bound for name in _names(ast.parse(s[2])))]


def _forget_read(saves: list[tuple[ast.Call, str, str]], stmt: ast.stmt) -> None:
    """Drop the saves whose path a call of `stmt` is given (`convert(checkpoint_path.parent,
    out)`, `torch.load(path)` between the two saves, litgpt's conversion test): the first
    file was used before the second save replaced it."""
    passed = {
        n.id
        for call in walk_scope([stmt])
        if isinstance(call, ast.Call)
        for arg in [*call.args, *(k.value for k in call.keywords)]
        for n in ast.walk(arg)
        if isinstance(n, ast.Name)
    }
    if passed:
        saves[:] = [s for s in saves if not _names(ast.parse(s[2])) & passed]


def _names(tree: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
