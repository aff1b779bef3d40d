"""ddp-accum-no-sync: skip DDP's all-reduce on the micro-batches that do not step."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import (
    EXACT_RTOL,
    Codemod,
    SourceContext,
    descendants,
    dotted_name,
    method_call,
)
from torchdoctor.agent.fixes.codemods.common import (
    flagged_loop,
    optimizer_steps,
    probe_symptom_gone,
)
from torchdoctor.agent.fixes.models import FixKind, FixTarget, SmokeRun

_PROBE_RULE = "probe-ddp-sync-every-micro-batch"
_DDP = ("DistributedDataParallel", "DDP")


class DdpAccumNoSyncFix(Codemod):
    """Wraps the forward and backward of each micro-batch in
    `with contextlib.nullcontext() if <step condition> else model.no_sync():`, where the step
    condition is the accumulation test that guards `optimizer.step()` (`(i + 1) % k == 0`).
    DDP then all-reduces only on the micro-batch that steps; the accumulated gradients are the
    same sum, so the loss trajectory must not move. The forward is inside the context too:
    DDP decides at forward time whether the coming backward synchronises.

    Not applied when the condition calls anything or reads a name the wrapped statements (or
    those before the step) assign, since evaluating it earlier would then change its value;
    nor when the forward of the DDP model is not a statement of the loop itself."""

    rule = "ddp-accum-no-sync"
    kind = FixKind.CORRECTNESS
    rtol = EXACT_RTOL
    summary = "run the micro-batches that do not step under model.no_sync()"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        loop = flagged_loop(ctx, target)
        if loop is None or not isinstance(loop.body, cst.IndentedBlock):
            return False
        if any(method_call(c, "no_sync") for c in ctx.find(cst.Call, inside=loop)):
            return False
        if _apex_ddp(ctx):
            return ctx.decline(
                "the model is wrapped by apex's DistributedDataParallel, which has no "
                "no_sync(): call `model.disable_allreduce()` before the micro-batches that "
                "do not step and `model.enable_allreduce()` before the one that does, by hand"
            )
        body = list(loop.body.body)
        guard = _step_guard(ctx, body)
        backward = _index_of(body, lambda s: _calls(s, "backward"))
        model, always_ddp = _ddp_model(ctx)
        if model is None:
            return ctx.decline("no model wrapped in DistributedDataParallel is seen in this file")
        if guard is None or backward is None:
            return ctx.decline(
                "the backward and the accumulation test around optimizer.step() are not both "
                "statements of the loop itself (one sits in a branch, such as a train/eval "
                f"switch, or a helper): wrap the forward and backward in {model}.no_sync() "
                "on the micro-batches that do not step, by hand"
            )
        step_at = body.index(guard)
        forward = _index_of(body, lambda s: _uses_model(s, model))
        if forward is None or not forward <= backward < step_at:
            return ctx.decline(
                f"`{model}`'s forward is not a statement of the loop before its backward: "
                "no_sync() must hold the forward too, so wrap them by hand"
            )
        condition = guard.test
        if ctx.find(cst.Call, inside=condition) or _assigned(body[forward:step_at]) & _names(
            condition
        ):
            return ctx.decline(
                "the step test calls a function or reads a name the micro-batch assigns: "
                "evaluated before the forward, its value could differ"
            )
        contextlib = ctx.require_module("contextlib")
        skip = (
            f"{model}.no_sync()"
            if always_ddp
            else f'getattr({model}, "no_sync", {contextlib}.nullcontext)()'
        )
        header = (
            f"with {contextlib}.nullcontext() if {ctx.code(condition)} else {skip}:\n    pass\n"
        )
        template = cst.parse_statement(header)
        assert isinstance(template, cst.With)
        wrapped = body[forward : backward + 1]
        first = wrapped[0]
        leading = getattr(first, "leading_lines", ())  # every statement node has them
        inner = [first.with_changes(leading_lines=[]), *wrapped[1:]]
        block = template.with_changes(
            body=template.body.with_changes(body=inner), leading_lines=leading
        )
        ctx.substitute(first, block)
        for stmt in wrapped[1:]:
            ctx.remove(stmt)
        return True

    def symptom_gone(self, before: SmokeRun, after: SmokeRun) -> tuple[bool, str]:
        """One gradient all-reduce per optimizer step instead of one per micro-batch."""
        return probe_symptom_gone(
            _PROBE_RULE, "DDP synchronised on every micro-batch", before, after
        )


def _step_guard(ctx: SourceContext, body: Sequence[cst.BaseStatement]) -> cst.If | None:
    """The statement `if <accumulation test>:` that holds the optimizer step."""
    for stmt in body:
        if isinstance(stmt, cst.If) and optimizer_steps(ctx, stmt.body):
            has_modulo = any(
                isinstance(op.operator, cst.Modulo)
                for op in ctx.find(cst.BinaryOperation, inside=stmt.test)
            )
            return stmt if has_modulo else None
    return None


def _apex_ddp(ctx: SourceContext) -> bool:
    """A DDP wrapper of the file is apex's (`from apex.parallel import
    DistributedDataParallel as DDP`, jeonsworld/ViT-pytorch): the fix's
    `getattr(model, "no_sync", nullcontext)` would quietly change nothing."""
    return any(
        (ctx.qualname(call.func) or "").startswith("apex.")
        for call in ctx.find(cst.Call)
        if (dotted_name(call.func) or "").split(".")[-1] in _DDP
    )


def _ddp_model(ctx: SourceContext) -> tuple[str | None, bool]:
    """The name bound to a DDP-wrapped model, and whether every binding of it wraps it."""
    wrapped: set[str] = set()
    for assign in ctx.find(cst.Assign):
        value = assign.value
        if isinstance(value, cst.Call) and (dotted_name(value.func) or "").split(".")[-1] in _DDP:
            wrapped |= {n for t in assign.targets if (n := dotted_name(t.target))}
    if len(wrapped) != 1:
        return None, False
    name = next(iter(wrapped))
    bindings = [
        a for a in ctx.find(cst.Assign) if any(dotted_name(t.target) == name for t in a.targets)
    ]
    conditional = any(isinstance(anc, cst.If) for a in bindings for anc in ctx.ancestors(a))
    return name, len(bindings) == 1 and not conditional


def _index_of(
    body: Sequence[cst.BaseStatement], test: Callable[[cst.BaseStatement], bool]
) -> int | None:
    return next((i for i, stmt in enumerate(body) if test(stmt)), None)


def _calls(stmt: cst.CSTNode, method: str) -> bool:
    return any(method_call(node, method) for node in descendants(stmt))


def _uses_model(stmt: cst.CSTNode, model: str) -> bool:
    """A call of the model, or a call that is given the model (`loss = step(model, batch)`)."""
    for node in descendants(stmt):
        if isinstance(node, cst.Call) and (
            dotted_name(node.func) == model
            or any(dotted_name(arg.value) == model for arg in node.args)
        ):
            return True
    return False


def _names(expr: cst.CSTNode) -> set[str]:
    return {n.value for n in descendants(expr) if isinstance(n, cst.Name)}


def _assigned(statements: Sequence[cst.CSTNode]) -> set[str]:
    names: set[str] = set()
    for stmt in statements:
        for node in descendants(stmt):
            targets: list[cst.CSTNode] = []
            if isinstance(node, cst.Assign):
                targets = [t.target for t in node.targets]
            elif isinstance(node, cst.AugAssign | cst.AnnAssign | cst.For | cst.NamedExpr):
                targets = [node.target]
            for target in targets:
                names |= _names(target)
    return names
