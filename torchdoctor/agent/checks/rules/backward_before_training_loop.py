"""backward-before-training-loop: gradients of a backward before the loop reach its first step."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import identifier
from torchdoctor.agent.checks.loops import walk_scope, walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_ZEROING = frozenset({"zero_grad", "zero_"})
_BLOCKS = ("body", "orelse", "finalbody")


class BackwardBeforeTrainingLoop(Rule):
    """Detects a `.backward()` run before a training loop in the same block (a sanity check,
    a reference dump, a gradient probe) when nothing between them clears the gradients or
    steps, and the loop clears gradients only after its `optimizer.step()`: the loop's first
    step adds the earlier backward's gradients to its own batch's.

    Why it matters: the first update is computed from the wrong gradients (twice a batch,
    or a debug batch's), silently; with a large learning rate or a warm-up at zero, this
    first step is the one that matters for a reproducible run. llm.c's `train_gpt2.py`
    ran `loss.backward()` to dump reference gradients before its training loop, whose
    `zero_grad` followed `optimizer.step()`, until `54ec686`.

    Not reported: loops that clear gradients before their first backward or step, a
    `zero_grad()`, `.grad = None` or step between the earlier backward and the loop, loops
    that do not train, and a backward in a nested function.

    Example:
        _, loss = model(x, y)
        loss.backward()
        write_state(model, x, y, loss)
        for step in range(num_iterations):
            model(x, y)[1].backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    Fix: clear the gradients after the earlier backward (`optimizer.zero_grad(set_to_none=True)`
    or `model.zero_grad()`), or clear them at the top of each step.
    """

    id = "backward-before-training-loop"
    point = 4
    severity = Severity.MEDIUM
    title = "Gradients of an earlier backward reach the loop's first step"
    items: ClassVar[tuple[str, ...]] = ("4.3",)
    triggers = Triggers(all_of=(("backward",), ("zero_grad",), ("step(",)))

    def finish(self, ctx: ModuleContext) -> None:
        for node in walk_tree(ctx.tree):
            for field in _BLOCKS:
                block = getattr(node, field, None)
                if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                    self._block(ctx, block)

    def _block(self, ctx: ModuleContext, block: list[ast.stmt]) -> None:
        pending: ast.Call | None = None
        for stmt in block:
            if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            if (
                pending is not None
                and isinstance(stmt, ast.For | ast.While)
                and _zeroes_after_step(stmt)
            ):
                ctx.report(
                    self,
                    pending,
                    f"the gradients of `{ast.unparse(pending)}` are still in `.grad` when the "
                    f"training loop at line {stmt.lineno} takes its first step: the loop "
                    "clears gradients only after `optimizer.step()`; zero them after this "
                    "backward",
                    data={"loop": stmt.lineno},
                )
                return
            for call in _calls(stmt):
                if _is_backward(call):
                    pending = call
                elif pending is not None and (_clears(call) or _steps(call)):
                    pending = None
            if pending is not None and _sets_grad_to_none(stmt):
                pending = None


def _calls(stmt: ast.stmt) -> list[ast.Call]:
    calls = [n for n in walk_scope([stmt]) if isinstance(n, ast.Call)]
    return sorted(calls, key=lambda c: (c.lineno, c.col_offset))


def _is_backward(call: ast.Call) -> bool:
    return isinstance(call.func, ast.Attribute) and call.func.attr == "backward"


def _clears(call: ast.Call) -> bool:
    return isinstance(call.func, ast.Attribute) and call.func.attr in _ZEROING


def _steps(call: ast.Call) -> bool:
    if not (isinstance(call.func, ast.Attribute) and call.func.attr == "step"):
        return False
    receiver = identifier(call.func.value).lower()
    return "optim" in receiver or receiver in ("opt", "scaler") or receiver.endswith("_opt")


def _sets_grad_to_none(stmt: ast.stmt) -> bool:
    return any(
        isinstance(n, ast.Assign)
        and any(isinstance(t, ast.Attribute) and t.attr == "grad" for t in n.targets)
        for n in walk_scope([stmt])
    )


def _zeroes_after_step(loop: ast.For | ast.While) -> bool:
    """The loop trains, and its first clearing of gradients comes after its first step."""
    calls = _calls(loop)
    first_step = next((c for c in calls if _steps(c)), None)
    if first_step is None or not any(_is_backward(c) for c in calls):
        return False
    first_clear = next((c for c in calls if _clears(c)), None)
    if first_clear is None or _sets_grad_to_none(loop):
        return False  # never cleared (zero-grad-missing's case), or cleared by assignment
    return (first_clear.lineno, first_clear.col_offset) > (
        first_step.lineno,
        first_step.col_offset,
    )
