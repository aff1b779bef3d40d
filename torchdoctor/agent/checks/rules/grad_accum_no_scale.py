"""grad-accum-no-scale: accumulated gradients are not divided by the number of micro-steps."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import (
    TRAINING_TEXT,
    direct_effects,
    enclosing_ifs,
    mentions_modulo,
    under_modulo_guard,
    walk_scope,
)
from torchdoctor.agent.models import Severity


def _divided(expr: ast.expr) -> bool:
    return isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Div | ast.FloorDiv)


class GradAccumNoScale(Rule):
    """Detects gradient accumulation (`optimizer.step()` only when `(i + 1) % k == 0`, or a
    `for micro_step in range(k):` loop that back-propagates, followed by the step) whose loss
    is back-propagated without being divided by the number of accumulated micro-batches (on
    the way, through names: `loss = -obj` where `obj = obj / n` is divided).

    Why it matters: gradients add up over the k micro-batches, so each step is k times larger
    than with one big batch of the same size: the effective learning rate is multiplied by k,
    and changing k silently changes the optimisation.

    Example:
        loss = criterion(model(x), y)
        loss.backward()
        if (i + 1) % accum_steps == 0:
            optimizer.step()
            optimizer.zero_grad()

    Not reported: a function that scales the accumulated gradients themselves before the
    step (`for p in params: p.grad.data.mul_(1.0 / meta_bsz)`, `p.grad /= k`), and a backward
    in the same branch of the modulo guard as the step (a GAN's discriminator trained every
    k-th batch: `if ii % d_every == 0:` clears, back-propagates and steps).

    Fix: scale the loss before backward: `(loss / accum_steps).backward()` (or
    `loss = loss / accum_steps`), or let the framework do it (`accelerator.accumulate`).
    """

    id = "grad-accum-no-scale"
    point = 4
    severity = Severity.MEDIUM
    title = "Gradient accumulation without loss scaling"
    items: ClassVar[tuple[str, ...]] = ("4.3",)
    triggers = TRAINING_TEXT

    def applies(self, ctx: ModuleContext) -> bool:
        return bool(ctx.loops.training_loops)

    def finish(self, ctx: ModuleContext) -> None:
        if "accumulate(" in ctx.source or "backward" not in ctx.source:
            return
        if "%" in ctx.source:
            for loop in ctx.loops.training_loops:
                if loop.kind != "loop":
                    continue
                effects = direct_effects(loop.body)
                steps = effects.step
                if steps and all(under_modulo_guard(ctx, s, loop.node) for s in steps):
                    backwards = [
                        b for b in effects.backward if not _stepped_with(ctx, b, steps, loop.node)
                    ]
                    self._check_backwards(ctx, loop.node, backwards)
        for micro in _micro_step_loops(ctx):
            self._check_backwards(ctx, micro, direct_effects(micro.body).backward)

    def _check_backwards(
        self, ctx: ModuleContext, loop: ast.AST, backwards: list[ast.Call]
    ) -> None:
        body = loop.body if isinstance(loop, ast.For | ast.While) else []
        divided_names = self._divided_names(body)
        fn = ctx.enclosing_function(loop)
        if fn is not None:
            if _gradients_rescaled(fn):
                return  # `p.grad.data.mul_(1.0 / meta_bsz)` before the step: averaged there
            divided_names |= self._divided_names(fn.body)
        for backward in backwards:
            loss = self._loss_expr(backward)
            if isinstance(loss, ast.Name):
                loss = _scaled_by_context(ctx, backward, loss)
            if loss is None or _divided(loss):
                continue
            if isinstance(loss, ast.Name) and loss.id in divided_names:
                continue
            if ctx.flow.derives_from(loss, _is_division):
                continue  # `loss = -pg_obj` where `pg_obj = pg_obj / (n * passes)`
            ctx.report(
                self,
                backward,
                "gradients are accumulated over several micro-batches but the loss is not "
                "divided by their number: the effective learning rate is multiplied",
            )

    @staticmethod
    def _loss_expr(call: ast.Call) -> ast.expr | None:
        """The loss a backward call differentiates (`loss.backward()`, `scaler.scale(loss)...`)."""
        assert isinstance(call.func, ast.Attribute)
        receiver = call.func.value
        if call.func.attr == "manual_backward" or (call.args and not _is_tensor_method(call)):
            return call.args[0] if call.args else None
        if (
            isinstance(receiver, ast.Call)
            and receiver.args
            and isinstance(receiver.func, ast.Attribute)
            and receiver.func.attr == "scale"
        ):
            return receiver.args[0]
        return receiver

    @staticmethod
    def _divided_names(body: list[ast.stmt]) -> set[str]:
        names: set[str] = set()
        for node in walk_scope(body):
            if isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Div | ast.FloorDiv):
                if isinstance(node.target, ast.Name):
                    names.add(node.target.id)
            elif isinstance(node, ast.Assign) and _divided(node.value):
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        return names


def _scaled_by_context(ctx: ModuleContext, backward: ast.Call, loss: ast.Name) -> ast.expr:
    """`with amp.scale_loss(loss, optimizer) as scaled_loss: scaled_loss.backward()` (apex):
    the loss given to the context manager is the one back-propagated, scaled."""
    for node in ctx.ancestors(backward):
        if not isinstance(node, ast.With | ast.AsyncWith):
            continue
        for item in node.items:
            made = item.context_expr
            if (
                isinstance(item.optional_vars, ast.Name)
                and item.optional_vars.id == loss.id
                and isinstance(made, ast.Call)
                and made.args
            ):
                return made.args[0]
    return loss


def _stepped_with(
    ctx: ModuleContext, backward: ast.Call, steps: list[ast.Call], loop: ast.AST
) -> bool:
    """The backward runs in the same branch of a modulo guard as a step (a GAN's
    discriminator trained every k-th batch: `if ii % d_every == 0: zero_grad(); ...;
    loss_d.backward(); optimizer_d.step()`): its gradients are used on the iteration that
    makes them, nothing accumulates."""
    guards = {
        (id(g), part) for g, part in enclosing_ifs(ctx, backward, loop) if mentions_modulo(g.test)
    }
    return any(
        (id(g), part) in guards for step in steps for g, part in enclosing_ifs(ctx, step, loop)
    )


_RESCALES = frozenset({"mul_", "div_"})


def _gradients_rescaled(fn: ast.AST) -> bool:
    """The function scales the accumulated gradients themselves (learn2learn's meta-batches:
    `for p in params: p.grad.data.mul_(1.0 / meta_bsz)`, or `p.grad /= k`)."""
    for node in walk_scope(
        fn.body if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef) else []
    ):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _RESCALES
            and _names_a_gradient(node.func.value)
        ):
            return True
        if (
            isinstance(node, ast.AugAssign)
            and isinstance(node.op, ast.Div | ast.Mult)
            and _names_a_gradient(node.target)
        ):
            return True
    return False


def _names_a_gradient(expr: ast.expr) -> bool:
    """`p.grad`, `p.grad.data`."""
    if isinstance(expr, ast.Attribute) and expr.attr == "data":
        expr = expr.value
    return isinstance(expr, ast.Attribute) and expr.attr == "grad"


def _is_division(node: ast.AST) -> bool:
    return isinstance(node, ast.BinOp | ast.AugAssign) and isinstance(node.op, ast.Div)


def _micro_step_loops(ctx: ModuleContext) -> list[ast.For]:
    """`for micro_step in range(accum_steps):` loops that back-propagate without stepping,
    followed in the same block by the optimizer step (nanoGPT, denoising-diffusion's
    `gradient_accumulate_every`), with no `zero_grad()` in between: a PGD attack's
    `for _ in range(attack_iters)` back-propagates into its perturbation, and the weights'
    gradients it leaves are cleared before the training loss back-propagates."""
    found: list[ast.For] = []
    for loop in ctx.flow.nodes(ast.For):
        it = loop.iter
        if not (
            isinstance(it, ast.Call)
            and isinstance(it.func, ast.Name)
            and it.func.id == "range"
            and len(it.args) == 1
            and isinstance(it.args[0], ast.Name | ast.Attribute)
        ):
            continue
        effects = direct_effects(loop.body)
        if not effects.backward or effects.step:
            continue
        parent = ctx.parents.get(loop)
        block = next(
            (
                stmts
                for field in ("body", "orelse", "finalbody")
                if isinstance(stmts := getattr(parent, field, None), list) and loop in stmts
            ),
            [],
        )
        after = block[block.index(loop) + 1 :] if block else []
        stepping = next((i for i, stmt in enumerate(after) if direct_effects([stmt]).step), None)
        if stepping is not None and not direct_effects(after[:stepping]).zero_grad:
            found.append(loop)
    return found


def _is_tensor_method(call: ast.Call) -> bool:
    """`loss.backward(gradient)` takes a tensor argument; `accelerator.backward(loss)` a loss."""
    receiver = call.func.value if isinstance(call.func, ast.Attribute) else None
    name = receiver.id if isinstance(receiver, ast.Name) else ""
    return "loss" in name.lower()
