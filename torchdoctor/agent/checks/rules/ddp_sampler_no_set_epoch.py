"""ddp-sampler-no-set-epoch: a shuffling DistributedSampler whose epoch is never advanced."""

from __future__ import annotations

import ast
from typing import Any, ClassVar

from torchdoctor.agent.checks.analysis.project import callee_symbol, module_name
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.checks.ddp import SAMPLERS, calls_method, uses_framework
from torchdoctor.agent.checks.loops import nodes_of, walk_tree
from torchdoctor.agent.checks.patterns import is_false, kwarg
from torchdoctor.agent.models import Severity

_KEY = "ddp-sampler-no-set-epoch"
MESSAGE = (
    "this DistributedSampler shuffles, but nothing in the project calls `set_epoch(epoch)`: "
    "its seed never changes, so every epoch visits the data in the same order"
)


class DdpSamplerNoSetEpoch(Rule):
    """Detects a `DistributedSampler` built with shuffling on (the default) in a project where
    no code calls `.set_epoch(...)` and some loop runs over epochs (`for epoch in ...`,
    `range(args.epochs)`).

    Why it matters: the sampler shuffles with `seed + epoch`, and its epoch only changes when
    `set_epoch` is called. Without it every epoch sees the same permutation on every rank:
    the model trains on a fixed order, which costs accuracy and makes runs look more
    reproducible than they are.

    Also reported: a sampler class of the project (a `Sampler` subclass, in any file) that
    defines its own `set_epoch` (voxceleb_trainer's `train_dataset_sampler`, seeding its
    shuffle with `seed + epoch`), built where nothing in the project calls `set_epoch`: the
    same order every epoch.

    Not reported: `shuffle=False`, projects with a single pass (no epoch loop), scripts driven
    by Lightning, Accelerate, the Hugging Face Trainer or Ignite (they advance the epoch), a
    sampler class with no `set_epoch` of its own (it reshuffles by itself or never does).

    Example:
        sampler = DistributedSampler(dataset)
        loader = DataLoader(dataset, batch_size=32, sampler=sampler)
        for epoch in range(epochs):
            for x, y in loader:
                ...

    Fix: `sampler.set_epoch(epoch)` at the start of every epoch, before iterating the loader.
    """

    id = "ddp-sampler-no-set-epoch"
    point = 6
    severity = Severity.MEDIUM
    title = "DistributedSampler without set_epoch"
    items: ClassVar[tuple[str, ...]] = ("6.8",)

    def applies(self, ctx: ModuleContext) -> bool:
        return "DistributedSampler" in ctx.source and not uses_framework(ctx)

    def finish(self, ctx: ModuleContext) -> None:
        fact: dict[str, Any] = {
            "set_epoch": calls_method(ctx, "set_epoch"),
            "epoch_loop": _has_epoch_loop(ctx),
            "samplers": [],
        }
        if self.applies(ctx):
            for call in nodes_of(ctx, ast.Call):
                if not isinstance(call, ast.Call) or ctx.call_qualname(call) not in SAMPLERS:
                    continue
                if is_false(kwarg(call, "shuffle")) or len(call.args) > 3:
                    continue  # shuffle=False, or shuffle passed by position
                found = ctx.finding(self, call, MESSAGE)
                if found is not None:
                    fact["samplers"].append(found.model_dump())
        seeded = _epoch_seeded_samplers(ctx)
        if seeded:
            fact["seeded"] = seeded
        if "set_epoch" in ctx.source or "ampler" in ctx.source:
            built = _sampler_constructions(self, ctx, seeded)
            if built:
                fact["built"] = built
        if fact["set_epoch"] or fact["epoch_loop"] or fact["samplers"] or seeded or "built" in fact:
            ctx.facts[_KEY] = fact

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        mine = [f[_KEY] for f in facts.values() if _KEY in f]
        if any(f["set_epoch"] for f in mine) or not any(f["epoch_loop"] for f in mine):
            return []
        seeded = {name for f in mine for name in f.get("seeded", [])}
        custom = [
            RawFinding.model_validate(found)
            for f in mine
            for symbol, found in f.get("built", [])
            if symbol in seeded
        ]
        return [RawFinding.model_validate(s) for f in mine for s in f["samplers"]] + custom


def _has_epoch_loop(ctx: ModuleContext) -> bool:
    if "epoch" not in ctx.source.lower():
        return False  # no name in the module says "epoch": no loop's target or iterable does
    for loop in nodes_of(ctx, ast.For):
        assert isinstance(loop, ast.For)
        mentioned = [
            n.id if isinstance(n, ast.Name) else n.attr
            for part in (loop.target, loop.iter)
            for n in walk_tree(part)
            if isinstance(n, ast.Name | ast.Attribute)
        ]
        if any("epoch" in word.lower() for word in mentioned):
            return True
    return False


CUSTOM_MESSAGE = (
    "this sampler seeds its shuffle by epoch (its class defines `set_epoch`), but nothing in "
    "the project calls `set_epoch(epoch)`: every epoch visits the data in the same order"
)


def _epoch_seeded_samplers(ctx: ModuleContext) -> list[str]:
    """Qualified names of this module's sampler classes (a base named `...Sampler`) that
    define `set_epoch`: their order changes only when it is called."""
    if "set_epoch" not in ctx.source:
        return []
    prefix = module_name(ctx.path)
    found = []
    for node in ctx.tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        bases = [ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases]
        if not any(b.endswith("Sampler") for b in bases):
            continue
        if any(isinstance(m, ast.FunctionDef) and m.name == "set_epoch" for m in node.body):
            found.append(f"{prefix}.{node.name}" if prefix else node.name)
    return found


def _sampler_constructions(rule: Rule, ctx: ModuleContext, local: list[str]) -> list[list[Any]]:
    """`[symbol, finding]` for each call of a class named like a sampler that may be one of the
    project's (a local class, or a name imported from another file): judged once every file's
    sampler classes are known."""
    local_names = {name.rsplit(".", 1)[-1]: name for name in local}
    found: list[list[Any]] = []
    for call in nodes_of(ctx, ast.Call):
        if not isinstance(call, ast.Call):
            continue
        func = call.func
        tail = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        if "sampler" not in tail.lower():
            continue
        symbol = local_names.get(tail) if isinstance(func, ast.Name) else None
        symbol = symbol or callee_symbol(ctx, func)
        if symbol is None:
            continue
        finding = ctx.finding(rule, call, CUSTOM_MESSAGE)
        if finding is not None:
            found.append([symbol, finding.model_dump()])
    return found
