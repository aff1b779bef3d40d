"""nonfinite-loss-unchecked: a training loop never checks the loss for NaN/Inf."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_GUARD = re.compile(r"isfinite|isnan|isinf|nan_to_num|GradScaler|detect_anomaly|math\.isfinite")


class NonfiniteLossUnchecked(Rule):
    """Detects a module with a training loop (reported once, at the first one) that never
    checks for non-finite values: no `torch.isfinite`/`isnan`/`isinf`, `math.isfinite`,
    `nan_to_num`, `GradScaler` (which skips inf steps) or anomaly detection anywhere in the
    module. Opt-in: the check is coarse and
    frameworks may guard elsewhere; the sandbox's NaN probe is the precise version.

    Why it matters: once the loss becomes NaN (a bad batch, a log of zero, an LR spike) every
    later step writes NaN into the weights; the run continues for hours and saves a
    worthless checkpoint.

    Example:
        for x, y in loader:
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()

    Fix: `if not torch.isfinite(loss): skip the step and log the batch` (or raise), before
    `backward()`.
    """

    id = "nonfinite-loss-unchecked"
    point = 2
    severity = Severity.LOW
    title = "No NaN/Inf guard in the training loop"
    items: ClassVar[tuple[str, ...]] = ("2.3",)
    triggers = Triggers(("backward",))
    tier = "opt-in"

    def applies(self, ctx: ModuleContext) -> bool:
        return "backward" in ctx.source and bool(ctx.loops.training_loops)

    def finish(self, ctx: ModuleContext) -> None:
        if "backward" not in ctx.source or _GUARD.search(ctx.source):
            return
        loops = [loop.node for loop in ctx.loops.training_loops if loop.kind == "loop"]
        if loops:
            first: ast.AST = min(loops, key=lambda n: n.lineno)
            ctx.report(
                self,
                first,
                "this training loop never checks the loss for NaN/Inf: a single bad step "
                "poisons the weights for the rest of the run",
                header_only=True,
                data={"training_loops": len(loops)},
            )
