"""accumulation-step-every-batch: the loss is scaled for gradient accumulation but the
optimizer steps after every micro-batch."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import (
    is_optimizer_step,
    receiver_name,
    walk_scope,
    walk_tree,
)
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

# A count of micro-batches accumulated per update (`gradient_accumulation_steps`,
# `accum_iter`, `args.grad_accum`, `iters_to_accumulate`).
_ACCUMULATION = re.compile(r"accum|iters_to_accumulate", re.IGNORECASE)
# The text of such a division (`/= gradient_accumulation_steps`, `/ args.accum_iter`): the
# cheap sieve before the module's loops are analysed.
_DIVIDED_BY_A_COUNT = re.compile(r"/=?\s*\(?\s*[\w.]*accum", re.IGNORECASE)


class AccumulationStepEveryBatch(Rule):
    """Detects a loop body that divides the loss by a gradient-accumulation count (`loss /=
    gradient_accumulation_steps`, `loss = loss / args.accum_iter`, `(loss / accum).backward()`)
    and then calls `optimizer.step()` on every iteration: the step is under no condition of
    the loop (no `if (i + 1) % accum == 0:`), in the same loop as the backward
    (reformer-pytorch's pretraining script, `42a8682`).

    Why it matters: nothing accumulates. Each micro-batch's gradient, shrunk by the
    accumulation count, is applied at once: the effective learning rate is divided by that
    count and the intended larger batch never forms, so runs with accumulation on train far
    slower than the configuration says, without any error.

    Not reported: a step under a condition of the loop (a modulo, a flag, the last batch), a
    step after an inner loop over micro-batches (`for chunk in chunks: ...backward()` then
    `optimizer.step()` outside it), loops inside `accelerator.accumulate(...)` (Accelerate's
    wrapped optimizer skips the steps itself) or driven by a DeepSpeed engine (`engine.step()`
    knows its accumulation boundary), and divisions by other counts (a number of tasks, of
    GPUs).

    Example:
        loss = loss_fn(output, labels)
        if gradient_accumulation_steps > 1:
            loss /= gradient_accumulation_steps
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    Fix: step (and zero the gradients) only every `gradient_accumulation_steps` micro-batches:
    `if (step + 1) % gradient_accumulation_steps == 0: optimizer.step(); optimizer.zero_grad()`.
    """

    id = "accumulation-step-every-batch"
    point = 4
    severity = Severity.HIGH
    title = "Loss scaled for accumulation, optimizer stepped every batch"
    items: ClassVar[tuple[str, ...]] = ("4.3",)
    triggers = Triggers(all_of=(("accum",), ("step(",), ("backward",)))

    def applies(self, ctx: ModuleContext) -> bool:
        return (
            self.triggers.found_in(ctx.source)
            and bool(_DIVIDED_BY_A_COUNT.search(ctx.source))
            and bool(ctx.loops.training_loops)
        )

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx) or ".accumulate(" in ctx.source:
            return
        for node in [*ctx.flow.nodes(ast.For), *ctx.flow.nodes(ast.While)]:
            if not isinstance(node, ast.For | ast.While):
                continue
            division = _accumulation_division(node.body)
            if division is None:
                continue
            step = _unguarded_step(node.body)
            if step is None or _engine_step(step):
                continue
            ctx.report(
                self,
                step,
                f"line {division.lineno} divides the loss by "
                f"`{ast.unparse(_divisor(division))}` for gradient accumulation, but "
                f"`{ast.unparse(step.func)}()` runs after every micro-batch: nothing "
                "accumulates; step every that many batches",
                data={"division_line": division.lineno},
            )


def _divisor(node: ast.AugAssign | ast.BinOp) -> ast.expr:
    return node.value if isinstance(node, ast.AugAssign) else node.right


def _accumulation_division(body: list[ast.stmt]) -> ast.AugAssign | ast.BinOp | None:
    """`loss /= accum`, `x / accum` of this loop body (not of a nested loop), the divisor
    named as an accumulation count."""
    for node in walk_scope(body):
        if isinstance(node, ast.For | ast.While):
            continue
        divisor = None
        if isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Div):
            divisor = node.value
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            divisor = node.right
        if (
            isinstance(node, ast.AugAssign | ast.BinOp)
            and divisor is not None
            and _names_accumulation(divisor)
            and not _inside_nested_loop(body, node)
        ):
            return node
    return None


def _names_accumulation(expr: ast.expr) -> bool:
    if isinstance(expr, ast.Name):
        return bool(_ACCUMULATION.search(expr.id))
    if isinstance(expr, ast.Attribute):
        return bool(_ACCUMULATION.search(expr.attr))
    return False


def _inside_nested_loop(body: list[ast.stmt], node: ast.AST) -> bool:
    """Whether `node` sits in a loop nested in `body` (judged with that loop instead)."""
    for stmt in body:
        for inner in walk_tree(stmt):
            if isinstance(inner, ast.For | ast.While) and any(
                sub is node for sub in walk_tree(inner)
            ):
                return True
    return False


def _unguarded_step(body: list[ast.stmt]) -> ast.Call | None:
    """An optimizer `step()` called as a statement of the loop body itself (at its top level
    or under `with` blocks): not in an `if`, a nested loop or a `try` handler."""
    pending: list[ast.stmt] = list(body)
    while pending:
        stmt = pending.pop(0)
        if isinstance(stmt, ast.With | ast.AsyncWith):
            pending[:0] = stmt.body
            continue
        if (
            isinstance(stmt, ast.Expr)
            and isinstance(stmt.value, ast.Call)
            and is_optimizer_step(stmt.value)
            and not stmt.value.args
        ):
            return stmt.value
    return None


def _engine_step(step: ast.Call) -> bool:
    """`model_engine.step()`, `engine.step()`: DeepSpeed's engine steps at its own boundary."""
    name = receiver_name(step).lower()
    return name.endswith("engine") or name == "model"
