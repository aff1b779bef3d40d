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

    Also reported (high): `loss.backward()` right after a loop that sums each iteration's
    `loss` into a total (`losses = losses + loss`, `losses += loss`): only the last
    iteration's loss is back-propagated, the others' gradients are lost (a graph-pair trainer
    like SimGNN's `process_batch` with its backward moved off the total).

    Not reported: `total = total / n` (uses the total), a reset (`total = 0`), a name
    assigned after the loop from values bound outside it, a backward of the total, and a loop
    that sums a detached copy or `.item()` (the total is then bookkeeping).

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
    severity_note = (
        "high when the last iteration's loss is back-propagated instead of the summed total "
        "(the model trains on one item); medium when a reported total is overwritten"
    )
    title = "Loop total overwritten by the last iteration's value"
    items: ClassVar[tuple[str, ...]] = ("3.4",)
    triggers = Triggers(("+=", "backward"))

    def applies(self, ctx: ModuleContext) -> bool:
        return "+=" in ctx.source or "backward" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        if "backward" in ctx.source:
            self._last_item_backpropagated(ctx)
        if "+=" not in ctx.source:
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

    def _last_item_backpropagated(self, ctx: ModuleContext) -> None:
        """`loss.backward()` after a loop that sums each iteration's `loss` into a total
        (`losses = losses + loss`, `losses += loss`): only the last iteration's loss gets
        gradients, the total (meant for backward) is left to logging."""
        for loop in ctx.flow.nodes(ast.For):
            sums = _sums_of_items(loop)
            if not sums:
                continue
            bound = _bound_names(loop)
            for stmt in _after(ctx, loop):
                if isinstance(stmt, ast.For | ast.While | ast.Return):
                    break
                item = _backpropagated_name(stmt)
                if item is None or item not in bound or item not in sums:
                    if _assigns(stmt) in sums:
                        break  # the item is bound again after the loop: a later value
                    continue
                total = sums[item]
                ctx.report(
                    self,
                    stmt,
                    f"`{item}.backward()` after the loop back-propagates the last iteration's "
                    f"`{item}` only; the loop sums every `{item}` into `{total}`: call "
                    f"`{total}.backward()`",
                    severity=Severity.HIGH,
                    data={"total": total, "item": item},
                )
                break


def _sums_of_items(loop: ast.For) -> dict[str, str]:
    """item -> total for each `total += item` / `total = total + item` in the loop's body."""
    found: dict[str, str] = {}
    for node in walk_scope(loop.body):
        if isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Add):
            if isinstance(node.target, ast.Name) and isinstance(node.value, ast.Name):
                found.setdefault(node.value.id, node.target.id)
        elif isinstance(node, ast.Assign) and (total := _assigns(node)) is not None:
            value = node.value
            if isinstance(value, ast.BinOp) and isinstance(value.op, ast.Add):
                sides = [value.left, value.right]
                names = [side.id for side in sides if isinstance(side, ast.Name)]
                if len(names) == 2 and total in names:
                    item = names[1] if names[0] == total else names[0]
                    if item != total:
                        found.setdefault(item, total)
    return found


def _backpropagated_name(stmt: ast.stmt) -> str | None:
    """`loss` of a statement `loss.backward(...)`."""
    if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
        return None
    func = stmt.value.func
    if isinstance(func, ast.Attribute) and func.attr == "backward":
        return func.value.id if isinstance(func.value, ast.Name) else None
    return None


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
