"""train-mode-not-restored: the epoch loop switches to eval() and never back to train()."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import local_callee
from torchdoctor.agent.models import Severity

_LOOPS = (ast.For, ast.While, ast.AsyncFor)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


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

    def applies(self, ctx: ModuleContext) -> bool:
        return "backward" in ctx.source and bool(ctx.loops.training_loops)

    def finish(self, ctx: ModuleContext) -> None:
        if "eval()" not in ctx.source and "train(False)" not in ctx.source:
            return
        flow = ctx.flow
        evaluating = flow.functions_reaching("eval")
        verdicts: dict[int, bool] = {}
        reported: set[int] = set()
        around_eval = flow.calls_containing_mode("eval")
        for call in flow.nodes(ast.Call):
            evals = id(call) in around_eval and flow.methods_called(call) == {"eval"}
            if not evals and local_callee(call) not in evaluating:
                continue
            loop = self._innermost_unrestored_loop(ctx, call, verdicts)
            if loop is None or id(loop) in reported:
                continue
            reported.add(id(loop))
            ctx.report(
                self,
                call,
                "this loop puts the model in eval mode and never calls .train() again: "
                "later epochs train with dropout off and BatchNorm frozen",
                data={"loop_line": loop.lineno},
            )

    @staticmethod
    def _innermost_unrestored_loop(
        ctx: ModuleContext, call: ast.Call, verdicts: dict[int, bool]
    ) -> ast.For | ast.While | ast.AsyncFor | None:
        for anc in ctx.ancestors(call):
            if isinstance(anc, _SCOPES):
                return None
            if not isinstance(anc, _LOOPS):
                continue
            if id(anc) not in verdicts:
                verdicts[id(anc)] = ctx.loops.trains(anc.body) and not (
                    ctx.flow.reaches_method(anc.body, "train")
                )
            if verdicts[id(anc)]:
                return anc
        return None
