"""dataloader-sync: load batches in worker processes, overlapping the training step."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import (
    EXACT_RTOL,
    Codemod,
    SourceContext,
    add_keyword,
    keyword,
    set_keyword,
)
from torchdoctor.agent.fixes.codemods.common import dataset_on_device, is_dataloader
from torchdoctor.agent.fixes.models import FixKind, FixTarget

MAX_WORKERS = 4
ON_DEVICE_REASON = (
    "the dataset moves its items to the GPU in `__getitem__`: a loader worker cannot use "
    "CUDA in a forked process; return CPU tensors and move the batch in the loop first"
)


class DataLoaderSyncFix(Codemod):
    """Sets `num_workers=min(4, os.cpu_count() or 1)` and `persistent_workers=True` on a
    DataLoader that loads in the main process. Whether this pays depends on the dataset (an
    in-memory TensorDataset gains nothing), which is exactly what the timing check decides."""

    rule = "dataloader-sync"
    kind = FixKind.PERFORMANCE
    summary = "DataLoader(num_workers=min(4, os.cpu_count() or 1), persistent_workers=True)"
    rtol = EXACT_RTOL
    relieves = "data_wait_share"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        if dataset_on_device(ctx):
            return ctx.decline(ON_DEVICE_REASON)
        for loader in ctx.find(cst.Call, within=(target.line, target.end_line)):
            if is_dataloader(ctx, loader) and _unguarded_top_level(ctx, loader):
                return ctx.decline(
                    "the loader is built at module level in a script with no `if __name__ == "
                    '"__main__":` guard: with spawn (macOS, Windows, CUDA in workers) every '
                    "worker would re-run the script; move the top-level code under a guard first"
                )
            if not is_dataloader(ctx, loader) or (
                len(loader.args) > 5 and loader.args[5].keyword is None
            ):
                continue
            local = _local_callable(ctx, loader)
            if local is not None:
                return ctx.decline(
                    f"the loader's {local}: workers started by spawn or forkserver (macOS, "
                    "Windows, Linux from Python 3.14) cannot pickle it; move it to module "
                    "level first"
                )
            workers = keyword(loader, "num_workers")
            if workers is not None and not (
                isinstance(workers.value, cst.Integer) and int(workers.value.value) == 0
            ):
                continue
            os_name = ctx.require_module("os")
            count = f"min({MAX_WORKERS}, {os_name}.cpu_count() or 1)"

            def edit_call(node: cst.CSTNode, count: str = count) -> cst.CSTNode:
                if not isinstance(node, cst.Call):
                    return node
                node = set_keyword(node, "num_workers", count)
                if keyword(node, "persistent_workers") is None:
                    node = add_keyword(node, "persistent_workers", "True")
                return node

            ctx.replace(loader, edit_call)
            return True
        return False


_PICKLED_CALLABLES = ("collate_fn", "worker_init_fn")


def _local_callable(ctx: SourceContext, loader: cst.Call) -> str | None:
    """What is local about the loader's `collate_fn` or `worker_init_fn`, if anything: a
    function defined in the loader's own function (a closure: lit-llama's finetuning
    `get_dataloader`) or a lambda. A worker process started by spawn or forkserver receives
    them pickled, and a local object does not pickle."""
    function = next((a for a in ctx.ancestors(loader) if isinstance(a, cst.FunctionDef)), None)
    local = (
        {d.name.value for d in ctx.find(cst.FunctionDef, inside=function.body)}
        if function is not None
        else set()
    )
    for name in _PICKLED_CALLABLES:
        arg = keyword(loader, name)
        if arg is None:
            continue
        if isinstance(arg.value, cst.Lambda):
            return f"`{name}` is a lambda"
        if function is not None and isinstance(arg.value, cst.Name) and arg.value.value in local:
            return f"`{name}` is `{arg.value.value}`, defined inside `{function.name.value}`"
    return None


def _unguarded_top_level(ctx: SourceContext, loader: cst.Call) -> bool:
    """What no-main-guard-workers would report once the loader has workers: built outside
    any function or class, in a module with no `__main__` guard."""
    if any(isinstance(a, cst.FunctionDef | cst.ClassDef) for a in ctx.ancestors(loader)):
        return False
    return not any(_is_main_guard(stmt) for stmt in ctx.module.body)


def _is_main_guard(stmt: cst.CSTNode) -> bool:
    if not isinstance(stmt, cst.If) or not isinstance(stmt.test, cst.Comparison):
        return False
    parts = [stmt.test.left, *(c.comparator for c in stmt.test.comparisons)]
    names = {p.value for p in parts if isinstance(p, cst.Name)}
    strings = {p.evaluated_value for p in parts if isinstance(p, cst.SimpleString)}
    return "__name__" in names and "__main__" in strings
