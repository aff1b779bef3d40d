"""ddp-save-every-rank: every rank of a data-parallel job writes the same checkpoint."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.ddp import (
    SHARDING,
    is_distributed,
    names_rank,
    runs_on_every_rank,
    uses_framework,
)
from torchdoctor.agent.checks.loops import nodes_of
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import argument
from torchdoctor.agent.models import Severity


class DdpSaveEveryRank(Rule):
    """Detects `torch.save(...)` in a script that runs as several ranks (it starts a process
    group, wraps the model in `DistributedDataParallel` or shards data with a
    `DistributedSampler`) where nothing restricts the save to one rank: no enclosing
    `if rank == 0:` / `if is_main_process():` / `if args.local_rank in [-1, 0]:`, no earlier
    `if rank != 0: return`, and, for a save inside a helper, a call site of the helper that is
    not guarded either.

    Why it matters: under torchrun every rank executes the script, so N processes write the
    same file at once: the writes race (a reader can see a torn file), the I/O is multiplied
    by the world size, and on shared file systems the job slows down for everyone.

    Not reported: saves whose path names the rank, also through the variable it is bound to
    (one file per rank is deliberate), scripts
    that shard parameters (FSDP, ZeRO, DeepSpeed: there the state dict is gathered by a
    collective every rank must join), scripts driven by Lightning, Accelerate, the Hugging Face
    Trainer or Ignite (they save from the main process themselves).

    Example:
        model = DDP(model)
        for epoch in range(epochs):
            train_one_epoch(model, loader)
            torch.save(model.state_dict(), "checkpoint.pt")

    Fix: save on rank 0 only, then let the other ranks wait for it:
        if dist.get_rank() == 0:
            torch.save(model.state_dict(), "checkpoint.pt")
        dist.barrier()
    """

    id = "ddp-save-every-rank"
    point = 6
    severity = Severity.MEDIUM
    title = "Every rank saves the same checkpoint"
    items: ClassVar[tuple[str, ...]] = ("6.8",)
    triggers = Triggers(("save",))

    def applies(self, ctx: ModuleContext) -> bool:
        return (
            "save" in ctx.source
            and not uses_framework(ctx)
            and not any(token in ctx.source for token in SHARDING)
            and is_distributed(ctx)
        )

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        for call in nodes_of(ctx, ast.Call):
            if not isinstance(call, ast.Call) or ctx.call_qualname(call) != "torch.save":
                continue
            path = argument(call, "f", 1)
            if path is None or _per_rank(ctx, path) or not runs_on_every_rank(ctx, call):
                continue
            ctx.report(
                self,
                call,
                "every rank runs this save: the processes write the same file at once; save "
                "on rank 0 only and `dist.barrier()` before other ranks read it",
            )


def _per_rank(ctx: ModuleContext, path: ast.expr) -> bool:
    """The path names the rank, directly or through what its variable was bound to
    (`queue_path = f"queue{args.rank}.pth"` before the loop): one file per rank."""
    return any(names_rank(source) for source in ctx.flow.sources(path))
