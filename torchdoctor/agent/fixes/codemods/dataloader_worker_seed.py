"""dataloader-worker-seed: give every DataLoader worker its own reproducible seed."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext, add_keyword, keyword
from torchdoctor.agent.fixes.codemods.common import is_dataloader
from torchdoctor.agent.fixes.codemods.no_torch_seed import SEED
from torchdoctor.agent.fixes.models import FixKind, FixTarget

HELPER = "seed_worker"


class DataLoaderWorkerSeedFix(Codemod):
    """Adds the PyTorch reproducibility recipe to the flagged DataLoader:
    `worker_init_fn=seed_worker` (seeds `random`/NumPy in each worker from torch's
    per-worker seed) and `generator=torch.Generator().manual_seed(0)`."""

    rule = "dataloader-worker-seed"
    kind = FixKind.CORRECTNESS
    summary = "DataLoader(worker_init_fn=seed_worker, generator=seeded Generator)"
    reproducibility = True

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        if target.data.get("state") == "generator-object":
            return False  # reseeding the globals leaves the dataset's own generator copied
        loaders = [
            c
            for c in ctx.find(cst.Call, within=(target.line, target.end_line))
            if is_dataloader(ctx, c)
        ]
        if len(loaders) != 1:
            return False
        loader = loaders[0]
        has_init, has_gen = keyword(loader, "worker_init_fn"), keyword(loader, "generator")
        if has_init and has_gen:
            return False
        torch = ctx.require_module("torch")
        if not has_init and not ctx.find(cst.FunctionDef, where=lambda f: f.name.value == HELPER):
            ctx.insert_module_level(_helper_source(ctx, torch))

        def edit_call(node: cst.CSTNode) -> cst.CSTNode:
            if not isinstance(node, cst.Call):
                return node
            if not has_init:
                node = add_keyword(node, "worker_init_fn", HELPER)
            if not has_gen:
                node = add_keyword(node, "generator", f"{torch}.Generator().manual_seed({SEED})")
            return node

        ctx.replace(loader, edit_call)
        return True


def _helper_source(ctx: SourceContext, torch: str) -> str:
    seeds = [f"    {ctx.require_module('random')}.seed(worker_seed)"]
    numpy = ctx.alias_of("numpy")
    if numpy is not None:
        seeds.append(f"    {numpy}.random.seed(worker_seed)")
    return (
        f"\n\ndef {HELPER}(worker_id: int) -> None:\n"
        '    """Seed `random` (and NumPy) in each DataLoader worker from torch\'s worker seed."""\n'
        f"    worker_seed = {torch}.initial_seed() % 2**32\n" + "\n".join(seeds) + "\n"
    )
