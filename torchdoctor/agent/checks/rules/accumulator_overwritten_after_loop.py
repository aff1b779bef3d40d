"""accumulator-overwritten-after-loop: a running total replaced by the last batch's value."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import summed_names, walk_scope, walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity


class AccumulatorOverwrittenAfterLoop(Rule):
    """Detects a total summed over a loop (`total_loss += loss.item()`) that the statement
    after the loop overwrites with a value computed from a name bound inside the loop and not
    from the total itself (`total_loss = loss.item() / len(dataset)`).

    Why it matters: the assignment meant to turn the sum into a mean uses the last batch's
    value instead: the reported validation loss (or accuracy) is one batch's, scaled by the
    dataset size, so it is wrong and noisy, and model selection or early stopping on it
    picks epochs at random.

    Not reported: `total = total / n` (uses the total), a reset (`total = 0`), a name
    assigned after the loop from values bound outside it.

    Example:
        for x, y in loader:
            loss = criterion(model(x), y)
            total += loss.item()
        total = loss.item() / len(loader.dataset)

    Fix: `total = total / len(loader.dataset)`.
    """

    id = "accumulator-overwritten-after-loop"
    point = 3
    severity = Severity.MEDIUM
    title = "Loop total overwritten by the last iteration's value"
    items: ClassVar[tuple[str, ...]] = ("3.4",)
    triggers = Triggers(("+=",))

    def applies(self, ctx: ModuleContext) -> bool:
        return "+=" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        # a report needs a name summed with `+=` somewhere and assigned after a loop: both
        # looked up first (the engine's node index), so most loops are never walked
        summed = summed_names(ctx)
        for loop in ctx.flow.nodes(ast.For) if summed else []:
            if not any(_assigns(stmt) in summed for stmt in _after(ctx, loop)):
                continue
            totals = _summed_names(loop)
            if not totals:
                continue
            bound = _bound_names(loop)
            for stmt in _after(ctx, loop):
                if isinstance(stmt, ast.For | ast.While | ast.Return):
                    break
                if not (
                    isinstance(stmt, ast.Assign)
                    and len(stmt.targets) == 1
                    and isinstance(stmt.targets[0], ast.Name)
                    and stmt.targets[0].id in totals
                ):
                    continue
                total = stmt.targets[0].id
                names = {n.id for n in walk_tree(stmt.value) if isinstance(n, ast.Name)}
                last = sorted(names & bound - {total})
                if total not in names and last:
                    ctx.report(
                        self,
                        stmt,
                        f"`{total}`, summed over the loop, is overwritten with a value of "
                        f"`{last[0]}`, the last iteration's: use `{total}` itself",
                    )
                break


def _after(ctx: ModuleContext, loop: ast.stmt) -> list[ast.stmt]:
    """The statements that run next after the loop in its block, and after the `with` blocks
    it ends (`with torch.no_grad(): for ...`), in order."""
    following: list[ast.stmt] = []
    node: ast.stmt = loop
    while True:
        parent = ctx.parents.get(node)
        block = getattr(parent, "body", None)
        if not isinstance(block, list) or not any(s is node for s in block):
            return following
        index = next(i for i, s in enumerate(block) if s is node)
        following += block[index + 1 :]
        if index + 1 < len(block) or not isinstance(parent, ast.With):
            return following
        node = parent


def _assigns(stmt: ast.stmt) -> str | None:
    """`name` of a plain `name = ...`."""
    if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
        target = stmt.targets[0]
        return target.id if isinstance(target, ast.Name) else None
    return None


def _summed_names(loop: ast.For) -> set[str]:
    return {
        n.target.id
        for n in walk_scope(loop.body)
        if isinstance(n, ast.AugAssign)
        and isinstance(n.op, ast.Add)
        and isinstance(n.target, ast.Name)
    }


def _bound_names(loop: ast.For) -> set[str]:
    """Names the loop binds: its target and the plain assignments of its body."""
    found = {n.id for n in walk_tree(loop.target) if isinstance(n, ast.Name)}
    for n in walk_scope(loop.body):
        if isinstance(n, ast.Assign):
            found |= {t.id for t in n.targets if isinstance(t, ast.Name)}
    return found
