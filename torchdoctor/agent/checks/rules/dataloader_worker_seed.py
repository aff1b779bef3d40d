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
    target_torch,
    terminal_name,
)
from torchdoctor.agent.models import Severity

_HOST_RANDOM = re.compile(
    r"\b(np|numpy)\.random\.(rand|randn|randint|random|choice|shuffle|permutation|uniform|"
    r"normal|beta|binomial|poisson)\(|\brandom\.(random|randint|choice|shuffle|uniform|"
    r"sample|gauss|randrange)\("
)
# A generator object built once in the parent (`self.rng = np.random.default_rng(seed)`):
# each worker receives a copy of it, which no per-worker reseeding of the globals touches.
_GENERATOR_OBJECT = re.compile(
    r"\bself\.\w+\s*=\s*((np|numpy)\.random\.(default_rng|RandomState)|random\.Random)\("
)
# Since torch 1.9 each worker seeds `random` and NumPy's global state from its own seed.
_WORKERS_SEED_GLOBALS = (1, 9)


class DataLoaderWorkerSeed(Rule):
    """Detects a `DataLoader` with worker processes (`num_workers` other than 0) and neither
    `worker_init_fn=` nor `generator=`, in a module whose data code draws from a random
    generator object a dataset keeps (`self.rng = np.random.default_rng(...)`,
    `random.Random(...)`), or, when the targeted torch is older than 1.9, from NumPy's or
    Python's global generators.

    Why it matters: a generator object is copied into every worker with the same state, so
    each worker draws the same augmentations. Since torch 1.9 the workers reseed `random` and
    NumPy's global state from their own per-worker, per-epoch seed, so global draws are not
    reported then; before 1.9 the NumPy state was copied from the parent as well.

    Example:
        loader = DataLoader(ds, batch_size=32, shuffle=True, num_workers=4)
        # ds.__init__ sets self.rng = np.random.default_rng(0); __getitem__ draws from it

    Fix: seed each worker's copy in `worker_init_fn` from `torch.utils.data.get_worker_info()`
    (`info.dataset.rng = np.random.default_rng(info.seed)`); for global draws on old torch, the
    recipe from the PyTorch reproducibility notes: `def seed_worker(_): s = torch.initial_seed()
    % 2**32; np.random.seed(s); random.seed(s)` then `DataLoader(..., worker_init_fn=seed_worker,
    generator=torch.Generator().manual_seed(0))`.
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
        if _GENERATOR_OBJECT.search(ctx.source):
            state = "generator-object"
            message = (
                "workers each get a copy of the same random generator object: seed each "
                "worker's copy in worker_init_fn"
            )
        elif (target_torch(ctx) or _WORKERS_SEED_GLOBALS) < _WORKERS_SEED_GLOBALS and (
            _HOST_RANDOM.search(ctx.source)
        ):
            state = "global"
            message = (
                "workers inherit the same NumPy/random state: pass worker_init_fn and "
                "generator to seed each worker"
            )
        else:
            return
        ctx.report(self, node, message, data={"state": state})
