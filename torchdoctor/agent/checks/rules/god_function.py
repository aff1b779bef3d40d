"""god-function: one function builds the data, the model, the optimizer and trains."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.vocabulary import DATALOADERS, OPTIMIZERS
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_scope
from torchdoctor.agent.checks.patterns import constructed_model, functions
from torchdoctor.agent.models import Severity

_MIN_LINES = 40


class GodFunction(Rule):
    """Detects a function of 40 lines or more that itself builds the DataLoader, the model and
    the optimizer and also contains the training loop.

    Why it matters: data, model, optimisation and the loop cannot be tested, reused or swapped
    separately (a new dataset or optimizer means editing, and re-reading, the whole function);
    hyperparameters end up as local literals, and the function cannot be unit-tested without
    running a full training.

    Example:
        def main():
            loader = DataLoader(MNIST(...), batch_size=64)
            model = Net().cuda()
            optimizer = torch.optim.Adam(model.parameters())
            for epoch in range(10):
                ...  # 60 more lines of training, logging and evaluation

    Fix: split it into `build_data(cfg)`, `build_model(cfg)`, `build_optimizer(cfg, model)`
    and `train(model, loader, optimizer, cfg)`, driven by one config object.
    """

    id = "god-function"
    point = 9
    severity = Severity.LOW
    title = "One function builds everything and trains"
    items: ClassVar[tuple[str, ...]] = ("9.2", "9.1")

    def finish(self, ctx: ModuleContext) -> None:
        loops = ctx.loops.training_loops
        if not loops or "DataLoader" not in ctx.source:
            return
        for fn in functions(ctx):
            length = (fn.end_lineno or fn.lineno) - fn.lineno + 1
            if length < _MIN_LINES:
                continue
            if not any(ctx.enclosing_function(loop.node) is fn for loop in loops):
                continue
            calls = [n for n in walk_scope(fn.body) if isinstance(n, ast.Call)]
            quals = {ctx.call_qualname(c) for c in calls}
            if not quals & DATALOADERS or not quals & OPTIMIZERS:
                continue
            if any(constructed_model(ctx, c) for c in calls):
                ctx.report(
                    self,
                    fn,
                    f"`{fn.name}` ({length} lines) builds the data, the model and the optimizer "
                    "and runs the training loop: split it so each part can be tested",
                    header_only=True,
                )
