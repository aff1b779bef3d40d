"""dataloader-worker-seed: worker processes share one NumPy/`random` state."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.analysis.vocabulary import DATALOADERS
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.patterns import (
    argument,
    constant_number,
    has_star_kwargs,
    kwarg,
    terminal_name,
)
from torchdoctor.agent.models import Severity

_HOST_RANDOM = re.compile(
    r"\b(np|numpy)\.random\.(rand|randn|randint|random|choice|shuffle|permutation|uniform|"
    r"normal|beta|binomial|poisson)\(|\brandom\.(random|randint|choice|shuffle|uniform|"
    r"sample|gauss|randrange)\("
)


class DataLoaderWorkerSeed(Rule):
    """Detects a `DataLoader` with worker processes (`num_workers` other than 0) and neither
    `worker_init_fn=` nor `generator=`, in a module whose data code draws from NumPy's or
    Python's global random generators.

    Why it matters: torch reseeds its own generator in each worker, but the NumPy and `random`
    states are copied from the parent with the fork, and every epoch restarts them; unless
    seeded per worker, augmentations repeat across workers and epochs, and runs cannot be
    reproduced from a seed.

    Example:
        loader = DataLoader(ds, batch_size=32, shuffle=True, num_workers=4)
        # ds.__getitem__ uses np.random.rand() for augmentation

    Fix: the recipe from the PyTorch reproducibility notes:
    `def seed_worker(_): s = torch.initial_seed() % 2**32; np.random.seed(s); random.seed(s)`
    then `DataLoader(..., worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(0))`.
    """

    id = "dataloader-worker-seed"
    point = 5
    severity = Severity.LOW
    title = "DataLoader workers not seeded"
    items: ClassVar[tuple[str, ...]] = ("5.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset({"DataLoader"})
    visit_gate: ClassVar[tuple[str, ...]] = ("DataLoader",)

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if terminal_name(node.func) != "DataLoader":
            return
        if ctx.call_qualname(node) not in DATALOADERS or has_star_kwargs(node):
            return
        workers = argument(node, "num_workers", 5)
        if workers is None or constant_number(workers) == 0:
            return
        if kwarg(node, "worker_init_fn") is not None or kwarg(node, "generator") is not None:
            return
        if not _HOST_RANDOM.search(ctx.source):
            return
        ctx.report(
            self,
            node,
            "workers inherit the same NumPy/random state: pass worker_init_fn and generator "
            "to seed each worker",
        )
