"""ddp-sampler-no-set-epoch: advance the DistributedSampler's epoch at the top of each epoch."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import (
    Codemod,
    SourceContext,
    dotted_name,
    keyword,
    method_call,
)
from torchdoctor.agent.fixes.codemods.common import is_dataloader, probe_symptom_gone
from torchdoctor.agent.fixes.models import FixKind, FixTarget, SmokeRun

_PROBE_RULE = "probe-ddp-sampler-no-set-epoch"


class DdpSamplerNoSetEpochFix(Codemod):
    """Inserts `sampler.set_epoch(epoch)` as the first statement of the loop over epochs that
    iterates the sampler's DataLoader (directly, or by passing it to a function), guarded by
    `hasattr` when the sampler is only sometimes distributed (`... if args.distributed else
    None`). A sampler built inline (`DataLoader(ds, sampler=DistributedSampler(ds))`) is
    reached as `loader.sampler`."""

    rule = "ddp-sampler-no-set-epoch"
    kind = FixKind.CORRECTNESS
    summary = "call sampler.set_epoch(epoch) at the start of every epoch"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        found = _sampler_and_loaders(ctx, target)
        if found is None:
            return False
        receiver, conditional, loaders = found
        loop = _epoch_loop(ctx, loaders)
        if loop is None or not isinstance(loop.target, cst.Name):
            return False
        if not isinstance(loop.body, cst.IndentedBlock):
            return False
        if any(method_call(c, "set_epoch") for c in ctx.find(cst.Call, inside=loop.body)):
            return False
        call = f"{receiver}.set_epoch({loop.target.value})\n"
        code = f'if hasattr({receiver}, "set_epoch"):\n    {call}' if conditional else call
        ctx.insert_before(loop.body.body[0], code)
        return True

    def explain(self, source: str, target: FixTarget) -> str | None:
        return (
            "no loop over epochs iterating this sampler's DataLoader in this file: call "
            "`sampler.set_epoch(epoch)` at the start of each epoch where the epochs are looped"
        )

    def symptom_gone(self, before: SmokeRun, after: SmokeRun) -> tuple[bool, str]:
        """The ranks' samplers produce a new order every epoch."""
        return probe_symptom_gone(_PROBE_RULE, "the sampler repeated its order", before, after)


def _sampler_and_loaders(
    ctx: SourceContext, target: FixTarget
) -> tuple[str, bool, set[str]] | None:
    """What to call set_epoch on, whether the sampler may be absent, and the loaders' names."""
    calls = ctx.find(
        cst.Call,
        within=(target.line, target.line),
        where=lambda c: (
            ctx.line(c) == target.line
            and (dotted_name(c.func) or "").endswith("DistributedSampler")
        ),
    )
    if len(calls) != 1:
        return None
    sampler = calls[0]
    holder = ctx.parent(sampler)
    conditional = isinstance(holder, cst.IfExp)
    if holder is not None and conditional:
        holder = ctx.parent(holder)
    if isinstance(holder, cst.Assign) and len(holder.targets) == 1:
        name = dotted_name(holder.targets[0].target)
        if name is None:
            return None
        assignments = [
            a for a in ctx.find(cst.Assign) if any(dotted_name(t.target) == name for t in a.targets)
        ]
        loaders = {
            loader
            for call in ctx.find(cst.Call, where=lambda c: is_dataloader(ctx, c))
            if (arg := keyword(call, "sampler")) is not None and dotted_name(arg.value) == name
            for loader in _assigned_names(ctx, call)
        }
        return name, conditional or len(assignments) > 1, loaders
    if isinstance(holder, cst.Arg) and holder.keyword and holder.keyword.value == "sampler":
        loader_call = ctx.parent(holder)
        if isinstance(loader_call, cst.Call) and is_dataloader(ctx, loader_call):
            names = _assigned_names(ctx, loader_call)
            if len(names) == 1:
                name = next(iter(names))
                return f"{name}.sampler", conditional, names
    return None


def _assigned_names(ctx: SourceContext, call: cst.Call) -> set[str]:
    parent = ctx.parent(call)
    if isinstance(parent, cst.Assign):
        return {n for t in parent.targets if (n := dotted_name(t.target))}
    return set()


def _epoch_loop(ctx: SourceContext, loaders: set[str]) -> cst.For | None:
    """The loop over epochs around every use of the loaders: the innermost `for` enclosing a
    loop over a loader (or a call given one) that is not that loop itself."""
    if not loaders:
        return None
    uses: list[cst.CSTNode] = []
    for loop in ctx.find(cst.For):
        if _mentions(loop.iter, loaders):
            uses.append(loop)
    for call in ctx.find(cst.Call):
        if any(_mentions(arg.value, loaders) for arg in call.args) and not is_dataloader(ctx, call):
            uses.append(call)
    # a method that iterates `self.train_data` is reached through its call sites
    # (`for epoch in ...: self._run_epoch(epoch)`)
    for use in list(uses):
        function = next((a for a in ctx.ancestors(use) if isinstance(a, cst.FunctionDef)), None)
        if function is not None and not _in_epoch_loop(ctx, use, loaders):
            uses += _call_sites(ctx, function.name.value)
    outer = {
        id(anc): anc
        for use in uses
        for anc in ctx.ancestors(use)
        if isinstance(anc, cst.For) and not _mentions(anc.iter, loaders)
    }
    candidates = [
        loop for loop in outer.values() if not any(_encloses(ctx, loop, o) for o in outer.values())
    ]
    return candidates[0] if len(candidates) == 1 else None


def _in_epoch_loop(ctx: SourceContext, use: cst.CSTNode, loaders: set[str]) -> bool:
    return any(
        isinstance(anc, cst.For) and not _mentions(anc.iter, loaders) for anc in ctx.ancestors(use)
    )


def _call_sites(ctx: SourceContext, name: str) -> list[cst.Call]:
    return [
        call for call in ctx.find(cst.Call) if (dotted_name(call.func) or "").split(".")[-1] == name
    ]


def _encloses(ctx: SourceContext, outer: cst.CSTNode, inner: cst.CSTNode) -> bool:
    return inner is not outer and any(anc is outer for anc in ctx.ancestors(inner))


def _mentions(expr: cst.CSTNode, names: set[str]) -> bool:
    if isinstance(expr, cst.Name | cst.Attribute) and dotted_name(expr) in names:
        return True
    if isinstance(expr, cst.Call):
        return any(_mentions(arg.value, names) for arg in expr.args) or _mentions(expr.func, names)
    return False
