"""accumulation-step-inverted: an accumulation guard `if i % n:` that steps on the wrong
batches."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import is_backward_call, is_optimizer_step, walk_scope
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import constant_number
from torchdoctor.agent.models import Severity


class AccumulationStepInverted(Rule):
    """Detects a training loop that runs `backward()` on every batch and calls
    `optimizer.step()` under a guard that is true when the batch count is *not* a multiple of
    the accumulation period: `if step % accum:` or `if (i + 1) % accum != 0:`, with the step in
    the guarded branch and none in its `else`.

    Why it matters: `i % n` is truthy on n - 1 batches out of n. The optimizer steps (and
    usually clears the gradients) on almost every batch and skips exactly the batch where
    accumulation was meant to end, so the effective batch is one batch, the gradients of
    every n-th batch leak into the next step, and with `n == 1` the model never trains.
    Nothing fails.

    Not reported: the guard `== 0` (the usual form), a guard after an inner loop that
    already steps when the same count is a multiple (the flush of the last, partial
    accumulation once the batches run out: `if step % n != 0: optimizer.step()` after the
    loop, minimind's trainers), a step in the `else` branch (the
    inverted test written on purpose), alternating updates with a step in both branches (a
    GAN's discriminator and generator), and guards in loops without a backward outside the
    guard (a backward inside it accumulates nothing).

    Example:
        for i, (x, y) in enumerate(loader):
            loss = criterion(model(x), y)
            loss.backward()
            if i % accumulation_steps:
                optimizer.step()
                optimizer.zero_grad()

    Fix: step when the count is a multiple of the period: `if (i + 1) % accumulation_steps
    == 0:`.
    """

    id = "accumulation-step-inverted"
    point = 1
    severity = Severity.HIGH
    title = "Gradient-accumulation guard inverted"
    items: ClassVar[tuple[str, ...]] = ("1.3",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.For, ast.AsyncFor, ast.While)
    triggers = Triggers(("backward(",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.For | ast.AsyncFor | ast.While)
        if not _module_has_guard(ctx):
            return  # no `if` of the module tests for a non-multiple: no loop holds a guard
        guards = [
            stmt
            for stmt in walk_scope(node.body)
            if isinstance(stmt, ast.If) and _not_multiple(ctx, stmt.test) is not None
        ]
        if not guards:
            return
        for guard in guards:
            if not _steps(guard.body) or _steps(guard.orelse):
                continue
            inside = {id(n) for n in walk_scope(guard.body)}
            if not any(
                isinstance(n, ast.Call) and is_backward_call(n) and id(n) not in inside
                for n in walk_scope(node.body)
            ):
                continue
            if _nested_loop_between(node, guard):
                continue
            modulo = _not_multiple(ctx, guard.test)
            assert modulo is not None
            if _flushes_the_remainder(ctx, node, guard, modulo):
                continue
            written = _written_at(ctx, guard.test)
            through = (
                ""
                if written is guard.test
                else f" (the test of `if {ast.unparse(guard.test)}:` on line {guard.lineno})"
            )
            ctx.report(
                self,
                written,
                f"`{ast.unparse(written)}`{through} makes the optimizer step on every batch "
                f"whose count is not a multiple of `{ast.unparse(modulo.right)}`: it steps on "
                f"almost every batch and skips the one where accumulation should end; step when "
                f"`{ast.unparse(modulo)} == 0`",
            )


def _module_has_guard(ctx: ModuleContext) -> bool:
    """Some `if` of the module tests `_not_multiple` (the walk's index is complete when
    visits run; answered once per module)."""
    memo = ctx.memo_table("accumulation_step_inverted.has_guard")
    if "" not in memo:
        memo[""] = any(
            isinstance(branch, ast.If) and _not_multiple(ctx, branch.test) is not None
            for branch in ctx.nodes_by_type().get(ast.If, ())
        )
    return bool(memo[""])


def _not_multiple(ctx: ModuleContext, test: ast.expr) -> ast.BinOp | None:
    """The `a % n` of a test true when `a` is not a multiple of `n`: `a % n` on its own,
    `a % n != 0`, `not (a % n == 0)`, or a flag bound to one of them in the same function
    (`if not is_accumulating:` after `is_accumulating = (i + 1) % n == 0`)."""
    found = _residue(ctx, test, _HOPS)
    return found[0] if found is not None and found[1] else None


def _written_at(ctx: ModuleContext, test: ast.expr) -> ast.expr:
    """Where the residue test is written: the guard itself, or the binding of the flag it
    reads (a flag often has other readers, `no_backward_sync(enabled=is_accumulating)`)."""
    found = _residue(ctx, test, _HOPS)
    if found is None or any(node is found[2] for node in ast.walk(test)):
        return test
    return found[2]


_HOPS = 2


def _residue(
    ctx: ModuleContext, test: ast.expr, hops: int
) -> tuple[ast.BinOp, bool, ast.expr] | None:
    """(`a % n`, whether `test` is true when `a` is not a multiple of `n`, the expression
    that holds the modulo test), or None when `test` is no such residue test."""
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        inner = _residue(ctx, test.operand, hops)
        return None if inner is None else (inner[0], not inner[1], inner[2])
    if isinstance(test, ast.Name):
        if hops == 0 or not isinstance(bound := ctx.flow.reaching(test), ast.expr):
            return None
        inner = _residue(ctx, bound, hops - 1)
        return None if inner is None else (inner[0], inner[1], bound)
    written, non_multiple = test, True
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        if constant_number(test.comparators[0]) != 0:
            return None
        if isinstance(test.ops[0], ast.NotEq):
            test = test.left
        elif isinstance(test.ops[0], ast.Eq):
            test, non_multiple = test.left, False
        else:
            return None
    if isinstance(test, ast.BinOp) and isinstance(test.op, ast.Mod):
        if isinstance(test.left, ast.Constant) and isinstance(test.left.value, str):
            return None  # "%d" % n: a format string
        period = constant_number(test.right)
        if period is None or period > 2:  # `% 2` alternates two updates as often
            return test, non_multiple, written
    return None


def _steps(body: list[ast.stmt]) -> bool:
    return any(isinstance(n, ast.Call) and is_optimizer_step(n) for n in walk_scope(body))


def _flushes_the_remainder(
    ctx: ModuleContext, loop: ast.AST, guard: ast.If, modulo: ast.BinOp
) -> bool:
    """The guard follows an inner loop of `loop` that already steps when the same count is a
    multiple (`if step % n == 0: optimizer.step()`): after that loop, `if step % n != 0:`
    steps once more on the gradients of the last, partial accumulation."""
    text = ast.unparse(modulo)
    for inner in walk_scope(getattr(loop, "body", [])):
        if not isinstance(inner, ast.For | ast.AsyncFor | ast.While):
            continue
        if (inner.end_lineno or inner.lineno) >= guard.lineno:
            continue  # not before the guard
        for branch in walk_scope(inner.body):
            if not isinstance(branch, ast.If) or not _steps(branch.body):
                continue
            found = _residue(ctx, branch.test, _HOPS)
            if found is not None and not found[1] and ast.unparse(found[0]) == text:
                return True
    return False


def _nested_loop_between(loop: ast.AST, guard: ast.If) -> bool:
    """The guard sits in an inner loop of `loop` (that loop is visited on its own)."""
    for inner in walk_scope(getattr(loop, "body", [])):
        if isinstance(inner, ast.For | ast.AsyncFor | ast.While) and any(
            n is guard for n in walk_scope(inner.body)
        ):
            return True
    return False
