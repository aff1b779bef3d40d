"""return-in-training-loop: a training loop whose body ends in an unconditional `return`."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import identifier
from torchdoctor.agent.checks.loops import walk_scope
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity


class ReturnInTrainingLoop(Rule):
    """Detects a `for` or `while` loop that trains (its body calls `.backward()` or an
    optimizer's `.step()`) and whose body ends in a `return` at the loop's own level: the
    first pass through the body leaves the function, so the loop trains on one batch.

    Why it matters: nothing fails; every epoch updates the model once and returns its
    running average as if the whole loader had been seen. deepcluster's `train` had its
    `return losses.avg` indented into the loop over the loader until `b90f878`.

    Not reported: a `return` under an `if` in the loop (early stopping, a step budget), in a
    `try`, or after a `continue` of the same loop (a retry loop that returns on its first
    success), a `return` after the loop, loops that do not train (a search that returns the
    first match), and a nested function's `return`.

    Example:
        for i, (x, y) in enumerate(loader):
            loss = crit(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return losses.avg

    Fix: dedent the `return` to after the loop.
    """

    id = "return-in-training-loop"
    point = 4
    severity = Severity.HIGH
    title = "Training loop returns after its first batch"
    items: ClassVar[tuple[str, ...]] = ("4.3",)
    triggers = Triggers(all_of=(("return",), ("backward", ".step(")))

    def finish(self, ctx: ModuleContext) -> None:
        by_type = ctx.nodes_by_type()
        loops = [
            *by_type.get(ast.For, []),
            *by_type.get(ast.AsyncFor, []),
            *by_type.get(ast.While, []),
        ]
        for loop in loops:
            if not isinstance(loop, ast.For | ast.AsyncFor | ast.While) or not loop.body:
                continue
            last = loop.body[-1]
            if not isinstance(last, ast.Return) or not _trains(loop.body[:-1]):
                continue
            if _continues(loop.body):
                continue  # a retry loop: `continue` on failure, `return` on the first success
            over = (
                f"the loop over `{ast.unparse(loop.iter)}`"
                if isinstance(loop, ast.For | ast.AsyncFor)
                else "the `while` loop"
            )
            ctx.report(
                self,
                last,
                f"`{ast.unparse(last)}` is the last statement of {over}, at the loop's own "
                "level: the first pass through the body returns, so the loop trains on one "
                "batch; dedent the `return` to after the loop",
            )


def _trains(body: list[ast.stmt]) -> bool:
    """The statements call `.backward()` or an optimizer's `.step()` (a receiver whose name
    says optimizer or scaler), outside nested functions."""
    for node in walk_scope(body):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        if node.func.attr == "backward":
            return True
        if node.func.attr == "step":
            receiver = identifier(node.func.value).lower()
            if "optim" in receiver or receiver in ("opt", "scaler") or receiver.endswith("_opt"):
                return True
    return False


def _continues(body: list[ast.stmt]) -> bool:
    """A `continue` of this loop (not of a loop nested in it, nor in a nested function)."""
    todo: list[ast.AST] = list(body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Continue):
            return True
        if isinstance(
            node,
            ast.For
            | ast.AsyncFor
            | ast.While
            | ast.FunctionDef
            | ast.AsyncFunctionDef
            | ast.ClassDef
            | ast.Lambda,
        ):
            if isinstance(node, ast.For | ast.AsyncFor | ast.While):
                todo.extend(node.orelse)  # a nested loop's `else` belongs to this one
            continue
        todo.extend(ast.iter_child_nodes(node))
    return False
