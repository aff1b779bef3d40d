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

from torchdoctor.agent.checks.analysis.held_out import held_out_name_kind
from torchdoctor.agent.checks.loops import walk_tree

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
    networks = ctx.flow.module_classes
    if "DataLoader" in text or ctx.loops.training_loops:  # code that handles data splits
        for call in ctx.nodes_by_type().get(ast.Call, ()):
            assert isinstance(call, ast.Call)
            if not any(isinstance(a, ast.Name | ast.Attribute) for a in _arguments(call)):
                continue
            for fn in ctx.calls.resolve(call):
                owner = ctx.calls.owner(fn)
                if id(fn) in found or (owner is not None and owner.name in networks):
                    continue  # a network's methods (`forward`) belong to their caller's mode
                bound = [a for a in ctx.calls.bind(call, fn).values() if _mentions_held_out(ctx, a)]
                held_out = any(ctx.flow.held_out_kind(arg, _HELD_OUT) for arg in bound)
                if held_out and not _backpropagates(ctx, fn):
                    found[id(fn)] = fn
    helpers = sorted(found.values(), key=lambda f: f.lineno)
    memo[""] = helpers
    return helpers


def _mentions_held_out(ctx: ModuleContext, arg: ast.expr) -> bool:
    """A cheap first look: a held-out name in the argument or in what a name was bound to
    (`loader = DataLoader(test_set)`), or a `train=False` / `split="val"` keyword there.
    Answered once per expression: a name's definitions are shared by all its uses."""
    memo = ctx.memo_table("roles.mentions_held_out")
    exprs = [arg, *(ctx.flow.definitions(arg) if isinstance(arg, ast.Name) else [])]
    for expr in exprs:
        found = memo.get(id(expr))
        if found is None:
            found = memo[id(expr)] = _walk_mentions_held_out(expr)
        if found:
            return True
    return False


def _walk_mentions_held_out(expr: ast.expr) -> bool:
    for node in walk_tree(expr):
        if isinstance(node, ast.Name | ast.Attribute):
            name = node.id if isinstance(node, ast.Name) else node.attr
            if held_out_name_kind(name) in _HELD_OUT:
                return True
        elif isinstance(node, ast.keyword) and node.arg in ("train", "split", "subset"):
            return True
    return False


def _arguments(call: ast.Call) -> list[ast.expr]:
    return [*call.args, *(k.value for k in call.keywords)]


def _backpropagates(ctx: ModuleContext, fn: FunctionNode) -> bool:
    return any(ctx.loops.backpropagates(f.body) for f in ctx.calls.reachable(fn))
