"""Roles values and functions play, as rules need them: evaluation helpers found by what they
are given, not by their name.

A function is an evaluation helper when a call in the module passes it held-out data (a
validation or test loader, split or array: `ctx.flow.held_out_kind`) and it never runs a
backward pass, itself or through the functions it calls. `compute_accuracy(model, val_loader)`
makes `compute_accuracy` one whatever its name; a `run_epoch(model, loader, optimizer)` that
trains on one call and validates on another is not (it back-propagates).
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torchdoctor.agent.checks.base import ModuleContext

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef
_HELD_OUT = frozenset({"test", "val"})


def evaluation_helpers(ctx: ModuleContext) -> list[FunctionNode]:
    """Local functions called with held-out data that never back-propagate (source order)."""
    memo = ctx.memo_table("roles.evaluation_helpers")
    if "" in memo:
        return memo[""]  # type: ignore[no-any-return]
    found: dict[int, FunctionNode] = {}
    text = ctx.source
    if any(token in text for token in ("val", "test", "train=False", "eval")):
        for call in ctx.nodes_by_type().get(ast.Call, ()):
            assert isinstance(call, ast.Call)
            if not call.args and not call.keywords:
                continue
            for fn in ctx.calls.resolve(call):
                if id(fn) in found or fn.name == "__init__":
                    continue
                bound = ctx.calls.bind(call, fn).values()
                held_out = any(ctx.flow.held_out_kind(arg, _HELD_OUT) for arg in bound)
                if held_out and not _backpropagates(ctx, fn):
                    found[id(fn)] = fn
    helpers = sorted(found.values(), key=lambda f: f.lineno)
    memo[""] = helpers
    return helpers


def _backpropagates(ctx: ModuleContext, fn: FunctionNode) -> bool:
    return any(ctx.loops.effects_of(f.body).backward for f in ctx.calls.reachable(fn))
