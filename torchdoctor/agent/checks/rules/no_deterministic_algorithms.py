"""no-deterministic-algorithms: seeded, yet non-deterministic kernels stay allowed."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import nodes_of
from torchdoctor.agent.checks.patterns import is_main_guard
from torchdoctor.agent.models import Severity

_DETERMINISM = ("use_deterministic_algorithms", "cudnn.deterministic", "deterministic=True")


class NoDeterministicAlgorithms(Rule):
    """Detects an entry script that seeds torch (`torch.manual_seed`, `seed_everything`) and
    trains, but never asks for deterministic kernels (`torch.use_deterministic_algorithms(True)`,
    `torch.backends.cudnn.deterministic = True`, Lightning's `Trainer(deterministic=True)`).
    Opt-in: determinism costs speed and is only wanted when exact reproducibility is.

    Why it matters: seeding fixes the random numbers, but several CUDA kernels (atomics in
    scatter/index_add, cuDNN algorithm choice) still vary from run to run, so two seeded runs
    drift apart and the seed gives a false sense of reproducibility.

    Example:
        torch.manual_seed(0)
        train(model, loader)

    Fix: `torch.use_deterministic_algorithms(True)`, `torch.backends.cudnn.benchmark = False`
    and the environment variable `CUBLAS_WORKSPACE_CONFIG=:4096:8`.
    """

    id = "no-deterministic-algorithms"
    point = 5
    severity = Severity.LOW
    title = "Seeded but non-deterministic kernels allowed"
    items: ClassVar[tuple[str, ...]] = ("5.1",)
    tier = "opt-in"

    def finish(self, ctx: ModuleContext) -> None:
        source = ctx.source
        if "seed" not in source or any(flag in source for flag in _DETERMINISM):
            return
        if not ctx.loops.training_loops:
            return
        seeds = [
            n
            for n in nodes_of(ctx, ast.Call)
            if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute | ast.Name)
            and (n.func.attr if isinstance(n.func, ast.Attribute) else n.func.id)
            in ("manual_seed", "seed_everything", "set_seed")
        ]
        if seeds and any(is_main_guard(stmt) for stmt in ctx.tree.body):
            ctx.report(
                self,
                seeds[0],
                "torch is seeded but non-deterministic kernels are still allowed: seeded runs "
                "can differ",
            )
