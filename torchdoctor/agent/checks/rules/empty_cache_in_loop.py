"""empty-cache-in-loop: the CUDA cache is flushed on every iteration."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import enclosing_ifs, mentions_modulo, walk_scope, walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import terminal_name, under_periodic_guard
from torchdoctor.agent.models import Severity

# CUDA memory statistics: a loop that reads them measures each configuration it runs.
_MEMORY_STATS = frozenset(
    {
        "memory_reserved",
        "memory_allocated",
        "max_memory_reserved",
        "max_memory_allocated",
        "reset_peak_memory_stats",
        "memory_stats",
        "mem_get_info",
    }
)


def _measures_memory(loop: ast.For | ast.While | ast.AsyncFor) -> bool:
    """A benchmark loop over configurations that reads the CUDA memory statistics for each
    one (YOLOv5's `profile` of layers): emptying the cache between them keeps one
    configuration's cached blocks out of the next one's figure."""
    return any(
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in _MEMORY_STATS
        for stmt in loop.body
        for node in walk_tree(stmt)
    )


_JOBS = frozenset({"train", "fit", "test", "evaluate", "validate", "run", "main"})


def _runs_a_whole_job(ctx: ModuleContext, loop: ast.For | ast.While | ast.AsyncFor) -> bool:
    """Each iteration is a whole pass, not a step: it holds a training loop itself (an epoch
    loop releasing the cache once per epoch) or runs a whole training or test
    (`exp.train(setting)`, `exp.test(setting)`: Time-Series-Library's repeated experiments).
    A job run only every N steps (`if global_step % division_step == 0: val_score =
    evaluate(...)`, a validation round inside the batch loop) makes the loop no such pass."""
    if _steps_itself(loop):
        return False
    training = {id(t.node) for t in ctx.loops.training_loops}
    for stmt in walk_scope(loop.body):
        if isinstance(stmt, ast.For | ast.While) and id(stmt) in training:
            return True
        if (
            isinstance(stmt, ast.Expr | ast.Assign)
            and isinstance(stmt.value, ast.Call)
            and (
                terminal_name(stmt.value.func) in _JOBS
                or _holds_a_training_loop(ctx, stmt.value, training)
            )
            and not _every_n_steps(ctx, stmt, loop)
        ):
            return True
    return False


def _steps_itself(loop: ast.For | ast.While | ast.AsyncFor) -> bool:
    """The loop's own body, outside nested loops, back-propagates and steps an optimizer: a step
    loop (abarankab/DDPM's `for iteration in range(...)`, which also switches the model with
    `diffusion.train()` each step and tests it every N steps), whatever else it calls."""
    pending: list[ast.AST] = list(loop.body)
    seen: set[str] = set()
    while pending:
        node = pending.pop()
        if isinstance(node, ast.For | ast.While | ast.AsyncFor | ast.FunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "backward":
                seen.add("backward")
            elif node.func.attr == "step" and not node.args and not node.keywords:
                seen.add("step")
        pending.extend(ast.iter_child_nodes(node))
    return seen == {"backward", "step"}


def _every_n_steps(ctx: ModuleContext, stmt: ast.stmt, loop: ast.AST) -> bool:
    """In the body of an `if` inside `loop` whose test takes a modulo (`if global_step %
    division_step == 0:`): run every N iterations, not on each."""
    return any(
        part == "body" and mentions_modulo(guard.test)
        for guard, part in enclosing_ifs(ctx, stmt, loop)
    )


def _holds_a_training_loop(ctx: ModuleContext, call: ast.Call, training: set[int]) -> bool:
    """`train_model(model, train_loader, ...)`: a local function whose body holds a training
    loop (a fold of a cross-validation trains a whole model)."""
    return any(
        isinstance(node, ast.For | ast.While) and id(node) in training
        for fn in ctx.calls.resolve(call)
        for node in walk_tree(fn)
    )


class EmptyCacheInLoop(Rule):
    """Detects `torch.cuda.empty_cache()` called inside a loop, on every iteration.

    Why it matters: it returns the caching allocator's free blocks to the driver, so the next
    iteration has to `cudaMalloc` them again (slow, and synchronising); it frees no memory that
    live tensors hold, so it does not fix a leak or an out-of-memory error.

    Example:
        for x, y in loader:
            train_step(x, y)
            torch.cuda.empty_cache()

    Fix: remove the call; to fight fragmentation set
    `PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`, and to find a leak use the memory
    snapshot tools.

    Not reported in a loop that reads the CUDA memory statistics (`memory_reserved`,
    `max_memory_allocated`): a benchmark measuring each configuration separately; nor in a
    loop each iteration of which is a whole pass (an epoch loop holding the training loop or
    calling a local function that holds one, `train_ins(epoch, loader, ...)`, or
    `exp.train(setting)`, `exp.test(setting)`: repeated experiments; a validation round run
    only every N steps of a batch loop does not make it one, nor does a `model.train()` call in
    a loop that back-propagates and steps itself); nor in an
    `except` handler (the cache released after a CUDA out-of-memory error before a retry on
    smaller inputs or the CPU runs only when the error happens).
    """

    id = "empty-cache-in-loop"
    point = 6
    severity = Severity.MEDIUM
    title = "torch.cuda.empty_cache() in a loop"
    items: ClassVar[tuple[str, ...]] = ("6.7",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset({"empty_cache"})
    triggers = Triggers(("empty_cache",))

    def __init__(self) -> None:
        self.in_functions: list[ast.Call] = []

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if not isinstance(node.func, ast.Attribute) or node.func.attr != "empty_cache":
            return
        if ctx.call_qualname(node) != "torch.cuda.empty_cache":
            return
        for anc in ctx.ancestors(node):
            if isinstance(anc, ast.ExceptHandler):
                return  # recovery after an error (a CUDA OOM, then a retry): not every step
            if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                if not under_periodic_guard(ctx, node, anc):
                    self.in_functions.append(node)  # decided in finish(): per-step or not
                return
            if isinstance(anc, ast.For | ast.While | ast.AsyncFor):
                if (
                    not under_periodic_guard(ctx, node, anc)
                    and not _measures_memory(anc)
                    and not _runs_a_whole_job(ctx, anc)
                ):
                    self._report(ctx, node)
                return

    def finish(self, ctx: ModuleContext) -> None:
        for node in self.in_functions:
            if ctx.loops.in_training_step(node):
                self._report(ctx, node)

    def _report(self, ctx: ModuleContext, node: ast.Call) -> None:
        ctx.report(
            self,
            node,
            "empty_cache() every iteration forces the allocator to re-allocate from the "
            "driver; it does not free live memory",
        )
