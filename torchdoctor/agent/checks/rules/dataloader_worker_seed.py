"""dataloader-worker-seed: worker processes share one NumPy/`random` state."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.analysis.vocabulary import DATALOADERS
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
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
    triggers = Triggers(("DataLoader",))

    def __init__(self) -> None:
        self.loaders: list[ast.Call] = []

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if terminal_name(node.func) != "DataLoader":
            return
        if ctx.call_qualname(node) not in DATALOADERS or has_star_kwargs(node):
            return
        workers = argument(node, "num_workers", 5)
        if workers is None or constant_number(workers) == 0:
            return
        if kwarg(node, "worker_init_fn") is None and kwarg(node, "generator") is None:
            self.loaders.append(node)

    def finish(self, ctx: ModuleContext) -> None:
        for node in self.loaders:  # judged once the module's scopes are all known
            self._judge(node, ctx)

    def _judge(self, node: ast.Call, ctx: ModuleContext) -> None:
        if _GENERATOR_OBJECT.search(ctx.source) and _may_hold_generator(ctx, node):
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


def _may_hold_generator(ctx: ModuleContext, loader: ast.Call) -> bool:
    """The loader's dataset may be (or wrap) an instance of a class of this module that keeps
    a generator object, or of one derived from it; a dataset built only from other classes
    (`ImageFolder(...)`, a CSV dataset next to a shard sampler that keeps one) does not."""
    dataset = argument(loader, "dataset", 0)
    if dataset is None:
        return True
    holders = _generator_holders(ctx)
    if not holders:
        return True
    if not any(isinstance(source, ast.Call) for source in ctx.flow.sources(dataset)):
        return True  # a parameter or an unknown value: it may be one of them
    return ctx.flow.derives_from(
        dataset,
        lambda sub: isinstance(sub, ast.Name | ast.Attribute) and terminal_name(sub) in holders,
    )


def _generator_holders(ctx: ModuleContext) -> set[str]:
    """Classes of the module that set a generator object on `self`, and their subclasses."""
    memo = ctx.memo_table("dataloader_worker_seed.holders")
    if "" not in memo:
        memo[""] = _holders(ctx.flow.classes)
    return memo[""]  # type: ignore[no-any-return]


def _holders(classes: dict[str, ast.ClassDef]) -> set[str]:
    holders = {name for name, cls in classes.items() if _GENERATOR_OBJECT.search(ast.unparse(cls))}
    grown = True
    while grown:
        grown = False
        for name, cls in classes.items():
            if name not in holders and any(terminal_name(b) in holders for b in cls.bases):
                holders.add(name)
                grown = True
    return holders
