"""ddp-metric-rank-local: a metric from one rank's shard logged as if it were the whole set's."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.ddp import SAMPLERS, is_distributed, rank_guarded, uses_framework
from torchdoctor.agent.checks.loops import nodes_of, walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import kwarg
from torchdoctor.agent.models import Severity

_SYNC_WORDS = ("reduce", "gather", "synchronize_between_processes", "sync_dist")
_LOG_CALLS = frozenset(
    {"print", "info", "log", "add_scalar", "add_scalars", "write", "log_metrics"}
)


class DdpMetricRankLocal(Rule):
    """Detects a metric accumulated over a DataLoader sharded by a `DistributedSampler`
    (`correct += ...`, `total_loss += ...` in the loop) and then logged on one rank only
    (`if rank == 0: print(...)`, `logger.info`, `writer.add_scalar`, `wandb.log`), in a
    module that never combines values across ranks (no `all_reduce`, `all_gather`, `reduce`,
    `gather`, no helper named for it such as `reduce_dict`, no torchmetrics).

    Why it matters: with a `DistributedSampler` each rank sees 1/world_size of the data, so
    rank 0's accuracy or loss is the metric of its shard only. It is reported as the
    validation score, compared across runs and used for early stopping or model selection,
    while it is computed on a fraction of the set (and a different fraction when the world
    size changes).

    Not reported: metrics reduced across ranks anywhere in the module, step counters
    (`train_step += 1`: every rank counts the same steps), torchmetrics (it syncs itself),
    loaders without a DistributedSampler, logs on every rank (each line then says which rank
    it is), Lightning / Accelerate / the Hugging Face Trainer.

    Example:
        val_loader = DataLoader(val_set, sampler=DistributedSampler(val_set, shuffle=False))
        for x, y in val_loader:
            correct += (model(x).argmax(1) == y).sum().item()
        if rank == 0:
            print(f"val accuracy {correct / len(val_set):.3f}")

    Fix: reduce the counts before computing the metric:
        counts = torch.tensor([correct, total], device=device)
        dist.all_reduce(counts)
        correct, total = counts.tolist()
    """

    id = "ddp-metric-rank-local"
    point = 6
    severity = Severity.MEDIUM
    title = "Metric of one rank's shard logged as global"
    items: ClassVar[tuple[str, ...]] = ("6.8",)
    triggers = Triggers(("DistributedSampler",))

    def applies(self, ctx: ModuleContext) -> bool:
        return (
            "DistributedSampler" in ctx.source
            and not uses_framework(ctx)
            and not _syncs_across_ranks(ctx)
            and is_distributed(ctx)
        )

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        loaders = _sharded_loaders(ctx)
        for loop in nodes_of(ctx, ast.For):
            assert isinstance(loop, ast.For)
            if not _iterates(loop.iter, loaders):
                continue
            accumulated = _accumulators(loop)
            if not accumulated:
                continue
            log = _first_guarded_log_after(ctx, loop, accumulated)
            if log is not None:
                ctx.report(
                    self,
                    log,
                    f"{', '.join(sorted(accumulated))} accumulated over this rank's shard of a "
                    "DistributedSampler and logged on one rank as if it were the whole set's: "
                    "all_reduce the counts first",
                )


def _syncs_across_ranks(ctx: ModuleContext) -> bool:
    if any(name.startswith("torchmetrics") for name in ctx.imports.aliases.values()):
        return True
    for call in nodes_of(ctx, ast.Call):
        assert isinstance(call, ast.Call)
        func = call.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if any(word in name.lower() for word in _SYNC_WORDS):
            return True
    return False


def _sharded_loaders(ctx: ModuleContext) -> set[str]:
    """Names bound to a DataLoader given a DistributedSampler (inline or through a name)."""
    samplers: set[str] = set()
    loaders: set[str] = set()
    for assign in nodes_of(ctx, ast.Assign):
        assert isinstance(assign, ast.Assign)
        if _is_sampler(ctx, assign.value):
            samplers |= _names(assign.targets)
    for assign in nodes_of(ctx, ast.Assign):
        assert isinstance(assign, ast.Assign)
        value = assign.value
        if not isinstance(value, ast.Call):
            continue
        sampler = kwarg(value, "sampler")
        if sampler is None:
            continue
        if _is_sampler(ctx, sampler) or ast.unparse(sampler) in samplers:
            loaders |= _names(assign.targets)
    return loaders


def _is_sampler(ctx: ModuleContext, expr: ast.expr) -> bool:
    calls = [expr.body, expr.orelse] if isinstance(expr, ast.IfExp) else [expr]
    return any(isinstance(c, ast.Call) and ctx.call_qualname(c) in SAMPLERS for c in calls)


def _names(targets: list[ast.expr]) -> set[str]:
    return {ast.unparse(t) for t in targets if isinstance(t, ast.Name | ast.Attribute)}


def _iterates(expr: ast.expr, loaders: set[str]) -> bool:
    """`loader`, `enumerate(loader)`, `tqdm(loader, ...)`."""
    if ast.unparse(expr) in loaders:
        return True
    return isinstance(expr, ast.Call) and any(_iterates(arg, loaders) for arg in expr.args)


_STEP_COUNTER = re.compile(r"(^|_)(steps?|iters?|iterations?|it|epochs?|updates?)$", re.I)
"""`train_step += 1`: every rank counts the same steps (a DistributedSampler gives each rank
as many batches), so the count is the whole run's, not a shard's metric."""


def _accumulators(loop: ast.For) -> set[str]:
    return {
        node.target.id
        for node in walk_tree(loop)
        if isinstance(node, ast.AugAssign)
        and isinstance(node.op, ast.Add)
        and isinstance(node.target, ast.Name)
        and not (isinstance(node.value, ast.Constant) and _STEP_COUNTER.search(node.target.id))
    }


def _first_guarded_log_after(
    ctx: ModuleContext, loop: ast.For, accumulated: set[str]
) -> ast.Call | None:
    """A log call after the loop, on one rank only, that reads an accumulator or a name
    computed from one (`acc = correct / total`)."""
    function = ctx.enclosing_function(loop)
    scope: ast.AST = function if function is not None else ctx.tree
    derived = set(accumulated)
    after = [n for n in walk_tree(scope) if getattr(n, "lineno", 0) > (loop.end_lineno or 0)]
    for node in sorted(after, key=lambda n: (getattr(n, "lineno", 0), getattr(n, "col_offset", 0))):
        if isinstance(node, ast.Assign) and _reads(node.value, derived):
            derived |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        if not isinstance(node, ast.Call) or not _is_log(node) or not _reads(node, derived):
            continue
        if rank_guarded(ctx, node):
            return node
    return None


def _is_log(call: ast.Call) -> bool:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name in _LOG_CALLS


def _reads(node: ast.AST, names: set[str]) -> bool:
    return any(isinstance(n, ast.Name) and n.id in names for n in walk_tree(node))
