"""Recognisers for data-parallel training scripts (checklist item 6.8).

Which module runs as one rank of several (it starts a process group, wraps a model in DDP or
shards data with a `DistributedSampler`), and which code runs on one rank only (under
`if rank == 0:`, `if is_main_process():`, after `if rank != 0: return`). Biased to silence:
anything that names a rank or a main process in its condition counts as a guard.
"""

from __future__ import annotations

import ast
import re

from torchdoctor.agent.checks.base import ModuleContext
from torchdoctor.agent.checks.loops import nodes_of, spelled_words, walk_tree
from torchdoctor.agent.checks.patterns import holds_through_flags

SAMPLERS = frozenset(
    {"torch.utils.data.distributed.DistributedSampler", "torch.utils.data.DistributedSampler"}
)
DISTRIBUTED_CALLS = SAMPLERS | {
    "torch.distributed.init_process_group",
    "torch.nn.parallel.DistributedDataParallel",
    "torch.nn.parallel.distributed.DistributedDataParallel",
}
_DISTRIBUTED_NAMES = frozenset(name.rsplit(".", 1)[-1] for name in DISTRIBUTED_CALLS)
SHARDING = ("FullyShardedDataParallel", "fully_shard", "ZeroRedundancyOptimizer", "deepspeed")
"""Saving under these is itself collective (state_dict gathers shards): never rank-0 only."""
FRAMEWORKS = (
    "lightning",
    "pytorch_lightning",
    "accelerate",
    "ignite",
    "trl",
    "deepspeed",
    "transformers.Trainer",
    "transformers.Seq2SeqTrainer",
    "transformers.trainer",
)
"""Trainers that call set_epoch, guard saves and reduce metrics themselves."""
_RANK_WORDS = re.compile(
    r"rank|main_process|is_main|master|primary|local_process_zero|world_process_zero|is_zero|"
    r"gpu_id|^gpu$|device_id|is_root|leader",
    re.IGNORECASE,
)
MAX_CALLER_DEPTH = 4


def is_distributed(ctx: ModuleContext) -> bool:
    """The module starts a process group, wraps a model in DDP or shards data by rank
    (asked by several rules: answered once per module, from the calls of those names)."""
    memo = ctx.memo_table("ddp.is_distributed")
    if "" not in memo:
        tokens = ("distributed", "DDP", "DistributedSampler")
        aliases = {a for a, target in ctx.imports.aliases.items() if target in DISTRIBUTED_CALLS}
        memo[""] = any(token in ctx.source for token in tokens) and any(
            ctx.call_qualname(call) in DISTRIBUTED_CALLS
            for call in ctx.flow.calls_named(_DISTRIBUTED_NAMES | aliases)
        )
    return bool(memo[""])


def calls_method(ctx: ModuleContext, *names: str) -> bool:
    """Whether the code (not its comments or docstrings) calls `<anything>.name(...)`."""
    return any(
        isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and call.func.attr in names
        for call in nodes_of(ctx, ast.Call)
    )


def uses_framework(ctx: ModuleContext) -> bool:
    """The module imports a trainer framework (by import, not by a class named `Trainer`)."""
    imported = ctx.imports.aliases.values()
    return any(
        name == framework or name.startswith(f"{framework}.")
        for name in imported
        for framework in FRAMEWORKS
    )


def names_rank(expr: ast.AST) -> bool:
    """Whether an expression mentions a rank or a main process (`rank == 0`, `args.local_rank
    in [-1, 0]`, `is_main_process()`, `accelerator.is_main_process`, `master_process`)."""
    return any(_RANK_WORDS.search(word) for word in spelled_words(expr))


def rank_guarded(ctx: ModuleContext, node: ast.AST) -> bool:
    """Runs on some ranks only: under a condition that names a rank, or after an early exit
    (`if rank != 0: return`) earlier in its function."""
    child = node
    for parent in ctx.ancestors(node):
        if isinstance(parent, ast.If | ast.IfExp | ast.While) and _rank_test(ctx, parent.test):
            return True
        if isinstance(parent, ast.BoolOp) and any(
            _rank_test(ctx, value) for value in parent.values if value is not child
        ):
            return True
        if isinstance(parent, ast.FunctionDef | ast.AsyncFunctionDef):
            return _exits_early_for_rank(parent, node)
        child = parent
    return False


def _rank_test(ctx: ModuleContext, test: ast.expr) -> bool:
    """A condition naming a rank, or a flag bound to one earlier (`args.save_logs = args.logs
    and is_master(args)`, then `if args.save_logs:`); a flag bound to anything but a condition
    (`device = torch.device(f"cuda:{local_rank}")`) is not one."""
    return holds_through_flags(ctx, test, names_rank, bound=_condition)


def _condition(value: ast.expr) -> bool:
    """A boolean expression, or a predicate call (`is_master(args)`), or another flag."""
    if isinstance(value, ast.Call):
        return names_rank(value.func)
    return isinstance(value, ast.Compare | ast.BoolOp | ast.UnaryOp | ast.Name | ast.Attribute)


def runs_on_every_rank(ctx: ModuleContext, node: ast.AST, depth: int = 0) -> bool:
    """Not rank-guarded where it stands, and, inside a function, reached from some call site
    in this module that is not guarded either (callers followed up to MAX_CALLER_DEPTH). A
    function no one here calls runs on every rank when it sets up the process group, DDP or
    the sampler (the per-rank entry point), and is left alone otherwise; so is one named for
    one rank (`save_on_master`). Memoised per (node, depth): saves share their callers."""
    memo = ctx.memo_table("ddp.runs_on_every_rank")
    key = (id(node), depth)
    found = memo.get(key)
    if found is None:
        found = memo[key] = _runs_on_every_rank(ctx, node, depth)
    return bool(found)


def _runs_on_every_rank(ctx: ModuleContext, node: ast.AST, depth: int) -> bool:
    if rank_guarded(ctx, node):
        return False
    function = ctx.enclosing_function(node)
    if function is None:
        return True
    if depth >= MAX_CALLER_DEPTH or names_rank(ast.Name(id=function.name)):
        return False
    sites = ctx.flow.calls_named((function.name,))
    if not sites:  # an entry point: the function that sets up the process group or DDP
        return _sets_up_ranks(ctx, function)
    return any(runs_on_every_rank(ctx, site, depth + 1) for site in sites)


def _sets_up_ranks(ctx: ModuleContext, function: ast.AST) -> bool:
    memo = ctx.memo_table("ddp.sets_up_ranks")
    found = memo.get(id(function))
    if found is None:
        found = memo[id(function)] = any(
            isinstance(call, ast.Call) and ctx.call_qualname(call) in DISTRIBUTED_CALLS
            for call in walk_tree(function)
        )
    return bool(found)


def _exits_early_for_rank(function: ast.FunctionDef | ast.AsyncFunctionDef, node: ast.AST) -> bool:
    line = getattr(node, "lineno", 0)
    for stmt in function.body:
        if stmt.lineno >= line:
            return False
        if (
            isinstance(stmt, ast.If)
            and names_rank(stmt.test)
            and stmt.body
            and isinstance(stmt.body[-1], ast.Return | ast.Continue | ast.Raise)
        ):
            return True
    return False
