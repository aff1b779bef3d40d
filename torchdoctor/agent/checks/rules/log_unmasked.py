"""log-unmasked: `torch.log` of a value that can be zero, with no clamp or epsilon."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import identifier
from torchdoctor.agent.models import Severity

_LOGS = frozenset({"torch.log", "torch.log2", "torch.log10"})
_SAFE_INNER = frozenset(
    {
        "clamp",
        "clamp_min",
        "clip",
        "exp",
        "softplus",
        "sigmoid",
        "softmax",
        "abs_",
        "maximum",
        "max",
        "relu",
    }
)


class LogUnmasked(Rule):
    """Detects `torch.log(x)` (also `log2`/`log10`) whose argument is not visibly kept away
    from zero: no `+ eps`, no `clamp`/`clamp_min`/`maximum`, not an `exp`/`softplus`/constant.
    Opt-in: many arguments are positive by construction in ways a static check cannot see.

    Why it matters: `log(0)` is `-inf` and its gradient is infinite; one zero probability in
    a batch turns the loss and then every weight into NaN (dslinter W5514, "missing mask").

    Example:
        loss = -(y * torch.log(p)).sum()

    Fix: `torch.log(p.clamp_min(1e-8))`, `torch.log(p + eps)`, or compute in log space
    (`log_softmax`, `logsigmoid`, `BCEWithLogitsLoss`).
    """

    id = "log-unmasked"
    point = 2
    severity = Severity.LOW
    title = "torch.log without clamp or epsilon"
    items: ClassVar[tuple[str, ...]] = ("2.3",)
    tier = "opt-in"

    def applies(self, ctx: ModuleContext) -> bool:
        return "log" in ctx.source and ctx.flow.imports("torch")

    def finish(self, ctx: ModuleContext) -> None:
        if "log" not in ctx.source:
            return
        for node in ctx.flow.calls_to(_LOGS):
            if node.args:
                self._check(ctx, node)

    def _check(self, ctx: ModuleContext, node: ast.Call) -> None:
        arg = node.args[0]
        if isinstance(arg, ast.BinOp) and isinstance(arg.op, ast.Add):
            return
        if isinstance(arg, ast.Constant) or (
            isinstance(arg, ast.Call)
            and (
                identifier(arg.func) in _SAFE_INNER
                or (bool(arg.args) and all(isinstance(a, ast.Constant) for a in arg.args))
            )
        ):
            return
        ctx.report(
            self,
            node,
            f"`{ast.unparse(node)}` has no clamp or epsilon: -inf/NaN when the argument is 0",
        )
