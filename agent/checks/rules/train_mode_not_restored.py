"""train-mode-not-restored: the epoch loop switches to eval() and never back to train()."""

from __future__ import annotations

import ast
from typing import ClassVar

from agent.checks.base import ModuleContext, Rule
from agent.checks.loops import local_callee, walk_scope
from agent.models import Severity

_LOOPS = (ast.For, ast.While, ast.AsyncFor)


class TrainModeNotRestored(Rule):
    """Detects a loop that trains (reaches `backward()` and an optimizer `step()`) and also
    switches the model to evaluation mode (`.eval()` / `.train(False)`, directly or in a
    validation function it calls), but never calls `.train()` again inside the loop.

    Why it matters: after the first validation the model stays in eval mode, so every later
    epoch trains with dropout off and BatchNorm frozen on its running statistics. Training
    still "works", but regularisation is gone and results differ from what the code says.

    Example:
        model.train()
        for epoch in range(epochs):
            for x, y in loader:
                ...
            validate(model)   # calls model.eval()

    Fix: call `model.train()` at the top of each epoch (or at the end of the validation
    function).
    """

    id = "train-mode-not-restored"
    point = 3
    severity = Severity.HIGH
    title = "Training continues in eval mode after validation"
    items: ClassVar[tuple[str, ...]] = ("3.4",)
    fixable = True

    def finish(self, ctx: ModuleContext) -> None:
        if "eval()" not in ctx.source and "train(False)" not in ctx.source:
            return
        flow = ctx.flow
        candidates = [
            node
            for node in ast.walk(ctx.tree)
            if isinstance(node, _LOOPS)
            and ctx.loops.effects_of(node.body).trains
            and flow.reaches_method(node.body, "eval")
            and not flow.reaches_method(node.body, "train")
        ]
        nested = {
            id(outer)
            for outer in candidates
            for inner in candidates
            if inner is not outer and inner in set(walk_scope(outer.body))
        }
        for loop in candidates:
            if id(loop) in nested:
                continue
            switch = _eval_switch(ctx, loop)
            ctx.report(
                self,
                switch,
                "this loop puts the model in eval mode and never calls .train() again: "
                "later epochs train with dropout off and BatchNorm frozen",
                data={"loop_line": loop.lineno},
                header_only=switch is loop,
            )


def _eval_switch(ctx: ModuleContext, loop: ast.For | ast.While | ast.AsyncFor) -> ast.AST:
    """The statement in the loop body that leads to `.eval()` (the loop itself if unclear)."""
    flow = ctx.flow
    for node in walk_scope(loop.body):
        if not isinstance(node, ast.Call):
            continue
        if "eval" in flow.methods_called(node):
            return node
        callee = local_callee(node)
        if callee in flow.functions and any(
            flow.reaches_method(fn.body, "eval") for fn in flow.functions[callee]
        ):
            return node
    return loop
