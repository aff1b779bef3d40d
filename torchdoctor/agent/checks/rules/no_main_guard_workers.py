"""no-main-guard-workers: worker processes started from an unguarded module."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.vocabulary import DATALOADERS
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import (
    argument,
    constant_number,
    has_main_guard,
    terminal_name,
)
from torchdoctor.agent.models import Severity


class NoMainGuardWorkers(Rule):
    """Detects a `DataLoader` with worker processes (`num_workers` not 0) created at module
    level in a script without an `if __name__ == "__main__":` guard.

    Why it matters: with the `spawn` start method (the default on Windows and macOS, and
    required for CUDA in workers) each worker re-imports the main module, which re-runs the
    top-level code: it crashes with a bootstrapping RuntimeError or starts training again in
    every worker.

    Example:
        loader = DataLoader(ds, batch_size=32, num_workers=4)
        for x, y in loader:
            ...

    Fix: move the top-level code into `def main():` and call it under
    `if __name__ == "__main__": main()`.

    Not reported in a notebook: its workers do not re-run its cells (a kernel's `__main__` is
    not a file to import), and it has no guard to add.
    """

    id = "no-main-guard-workers"
    point = 9
    severity = Severity.MEDIUM
    title = "Worker processes without a __main__ guard"
    items: ClassVar[tuple[str, ...]] = ("9.2",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset({"DataLoader"})
    triggers = Triggers(("DataLoader",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if terminal_name(node.func) != "DataLoader":
            return
        if ctx.call_qualname(node) not in DATALOADERS or ctx.enclosing_function(node):
            return
        if ctx.path.endswith(".ipynb"):
            return
        workers = argument(node, "num_workers", 5)
        if workers is None or constant_number(workers) == 0 or has_main_guard(ctx.tree):
            return
        if any(isinstance(a, ast.ClassDef) for a in ctx.ancestors(node)):
            return
        ctx.report(
            self,
            node,
            "worker processes are started from module level with no __main__ guard: with "
            "spawn, every worker re-runs this script",
        )
