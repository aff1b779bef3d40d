"""optimizer-params-reused: a second optimizer built over a network another one updates."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_scope
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity


class OptimizerParamsReused(Rule):
    """Detects two optimizers stored under different names and built, in the same block,
    over the same network's parameters (`optimizer_value = Adam(value_net.parameters())`,
    then `optimizer_discrim = Adam(value_net.parameters())`), in a module where another
    network's parameters go to no optimizer at all (`discrim_net`).

    Why it matters: it is the copy-paste slip of multi-network training (GAN, actor-critic,
    GAIL): one network is stepped twice per update, with two optimizer states, and the other
    is never trained at all. Losses still go down for the first network, so nothing fails;
    the discriminator or critic simply stays at its initial weights.

    Not reported: one optimizer re-created under the same name (after unfreezing), optimizers
    in different branches (`if args.optim == "sgd": ... else: ...`), different parameter
    groups of one network (`net.encoder.parameters()` and `net.head.parameters()`), modules
    where every network built has an optimizer (two optimizers over one network on purpose),
    and test modules.

    Example:
        optimizer_value = torch.optim.Adam(value_net.parameters(), lr=lr)
        optimizer_discrim = torch.optim.Adam(value_net.parameters(), lr=lr)

    Fix: build each optimizer over its own network's parameters
    (`Adam(discrim_net.parameters(), lr=lr)`).
    """

    id = "optimizer-params-reused"
    point = 4
    severity = Severity.HIGH
    title = "Second optimizer over a network another optimizer updates"
    items: ClassVar[tuple[str, ...]] = ("4.3",)
    triggers = Triggers((".parameters()",))

    def applies(self, ctx: ModuleContext) -> bool:
        return "optim" in ctx.source and ".parameters()" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx) or ctx.test_module:
            return
        built = (s for s in ctx.flow.nodes(ast.Assign) if _optimizer_over(ctx, s) is not None)
        if next(built, None) is None or next(built, None) is None:
            return  # a finding needs two optimizers built in one block: most modules build one
        optimized = _parameter_owners(ctx)
        scopes: list[ast.AST] = [ctx.tree, *ctx.flow.nodes(ast.FunctionDef)]
        for scope in scopes:
            body = scope.body if isinstance(scope, ast.Module | ast.FunctionDef) else []
            for block in _blocks(body):
                self._check_block(ctx, block, optimized)

    def _check_block(self, ctx: ModuleContext, block: list[ast.stmt], optimized: set[str]) -> None:
        seen: dict[str, tuple[str, ast.stmt]] = {}  # parameters' owner -> (optimizer, stmt)
        for stmt in block:
            built = _optimizer_over(ctx, stmt)
            if built is None:
                continue
            name, owner = built
            first = seen.get(owner)
            if first is None:
                seen[owner] = (name, stmt)
                continue
            if first[0] == name:
                continue
            idle = sorted(_idle_networks(ctx, optimized))
            if not idle:
                continue
            ctx.report(
                self,
                stmt,
                f"`{name}` is built over `{owner}.parameters()`, which `{first[0]}` (line "
                f"{first[1].lineno}) already updates, while "
                + ", ".join(f"`{n}`" for n in idle)
                + " is in no optimizer: a copy-paste slip that trains one network twice and "
                "the other never",
            )


def _blocks(body: list[ast.stmt]) -> list[list[ast.stmt]]:
    """`body` and every statement list nested in it (not in nested functions)."""
    found = [body]
    for node in walk_scope(body):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue  # a scope of its own
        for field in ("body", "orelse", "finalbody"):
            inner = getattr(node, field, None)
            if isinstance(inner, list) and inner and isinstance(inner[0], ast.stmt):
                found.append(inner)
    return found


def _optimizer_over(ctx: ModuleContext, stmt: ast.stmt) -> tuple[str, str] | None:
    """(optimizer name, parameters' owner) of `opt = torch.optim.X(owner.parameters(), ...)`."""
    if not (
        isinstance(stmt, ast.Assign)
        and len(stmt.targets) == 1
        and isinstance(stmt.targets[0], ast.Name | ast.Attribute)
        and isinstance(stmt.value, ast.Call)
        and stmt.value.args
    ):
        return None
    # the written name when the import is not resolved (`torch` from a star import)
    qual = ctx.flow.qualname_of(stmt.value) or ast.unparse(stmt.value.func)
    if not qual.startswith(("torch.optim.", "optim.")) or "lr_scheduler" in qual:
        return None
    params = stmt.value.args[0]
    if not (
        isinstance(params, ast.Call)
        and isinstance(params.func, ast.Attribute)
        and params.func.attr == "parameters"
        and not params.args
    ):
        return None
    return ast.unparse(stmt.targets[0]), ast.unparse(params.func.value)


def _parameter_owners(ctx: ModuleContext) -> set[str]:
    """Every `x` of an `x.parameters()` / `x.named_parameters()` the module mentions (from
    the module's call index, not a walk of the tree)."""
    return {
        ast.unparse(node.func.value)
        for node in ctx.flow.calls_named(("parameters", "named_parameters"))
        if isinstance(node.func, ast.Attribute)
    }


def _idle_networks(ctx: ModuleContext, optimized: set[str]) -> set[str]:
    """Networks the module builds (`discrim_net = Discriminator(...)`) whose parameters it
    never mentions; not the layers a network's own `__init__` builds."""
    idle: set[str] = set()
    for node in ast.walk(ctx.tree):
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
            continue
        owner = ctx.calls.owner(fn) if (fn := ctx.enclosing_function(node)) else None
        if owner is not None and owner.name in ctx.flow.module_classes:
            continue
        for target in node.targets:
            if not isinstance(target, ast.Name | ast.Attribute):
                continue
            text = ast.unparse(target)
            func = node.value.func
            constructor = isinstance(func, ast.Name | ast.Attribute) and (
                (func.id if isinstance(func, ast.Name) else func.attr)[:1].isupper()
            )
            if constructor and text not in optimized and ctx.flow.is_module_value(target):
                idle.add(text)
    return idle
