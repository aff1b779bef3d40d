"""eval-without-eval-mode: evaluate in eval mode, then restore the mode the model was in."""

from __future__ import annotations

from collections.abc import Sequence

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import (
    Codemod,
    SourceContext,
    descendants,
    dotted_name,
    scope_of,
)
from torchdoctor.agent.fixes.codemods.common import is_no_grad, model_called_in
from torchdoctor.agent.fixes.models import FixKind, FixTarget, SmokeRun

_EXITS = (cst.Return, cst.Break, cst.Continue, cst.Raise, cst.Yield)


class EvalWithoutEvalModeFix(Codemod):
    """Puts `model.eval()` before the flagged `no_grad`/`inference_mode` block and restores the
    previous mode after it (`model.train(was_training)`), inside `try/finally` when the block
    can leave early. Dropout and batch-norm then behave as at inference during evaluation."""

    rule = "eval-without-eval-mode"
    kind = FixKind.CORRECTNESS
    summary = "model.eval() around evaluation, then restore the previous mode"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        block = _evaluation_block(ctx, target)
        if block is None:
            return ctx.decline("no single evaluation block encloses the flagged forward")
        model = model_called_in(ctx, block, target.data.get("model"))
        if model is None:
            return ctx.decline(
                "the model is not called by a plain name in the block (a helper or a "
                "container runs it): call `.eval()` on it before evaluating"
            )
        if ctx.calls_method(scope_of(ctx, block), model, "eval"):
            return ctx.decline(
                f"`{model}.eval()` is already called in this function, on a path that may "
                "not reach the evaluation: move it so that every path does"
            )
        unbound = _unbinds(block, model)
        if unbound is not None:
            return ctx.decline(
                f"the block {unbound} `{model}`: its mode cannot be restored after it (a "
                f"NameError, or another model); call `{model}.eval()` before it by hand"
            )
        flag = _free_name(ctx, "was_training")
        ctx.insert_before(block, f"{flag} = {model}.training\n{model}.eval()\n")
        restore = f"{model}.train({flag})\n"
        if any(isinstance(n, _EXITS) for n in descendants(block)):
            ctx.replace(block, lambda n: _try_finally(n, restore))
        else:
            ctx.insert_after(block, restore)
        return True

    def symptom_gone(self, before: SmokeRun, after: SmokeRun) -> tuple[bool, str]:
        """The mode probe counts forwards run under no_grad while the model was training."""
        count = after.signals.train_mode_forwards_without_grad
        if count is None:
            return super().symptom_gone(before, after)
        return count == 0, f"forwards in train mode under no_grad after the fix: {count}"


def _evaluation_block(ctx: SourceContext, target: FixTarget) -> cst.CSTNode | None:
    """The flagged `no_grad`/`inference_mode` block, else the outermost loop around the flagged
    forward that trains nothing when an outer one does, else the statement of the enclosing
    function (or module) that holds the flagged forward."""
    span = (target.line, target.end_line)
    blocks = [
        w for w in ctx.find(cst.With, within=span) if any(is_no_grad(ctx, i.item) for i in w.items)
    ]
    outermost = [b for b in blocks if not any(a in blocks for a in ctx.ancestors(b))]
    if outermost:
        return outermost[0] if len(outermost) == 1 else None
    calls = ctx.find(cst.Call, within=span)
    if not calls:
        return None
    loops = [a for a in ctx.ancestors(calls[0]) if isinstance(a, cst.For)]
    evaluating = [loop for loop in loops if not _backpropagates(loop)]
    if evaluating and len(evaluating) < len(loops):
        # an evaluation loop inline after the epoch's training loop: `.train()` at the top of
        # each epoch would undo an `.eval()` put before the epoch loop
        return evaluating[-1]
    scope = scope_of(ctx, calls[0])
    if isinstance(scope, cst.FunctionDef) and isinstance(scope.body, cst.IndentedBlock):
        body: Sequence[cst.BaseStatement] = scope.body.body
    elif isinstance(scope, cst.Module):
        body = scope.body
    else:
        return None
    return next((s for s in body if any(a is s for a in ctx.ancestors(calls[0]))), None)


def _unbinds(block: cst.CSTNode, model: str) -> str | None:
    """ "deletes" or "rebinds" when the block has `del model` or assigns `model` (a checkpoint
    converter's `out = model(x); del model` before loading the reference model)."""
    for node in descendants(block):
        if isinstance(node, cst.Del) and model in _names_of(node.target):
            return "deletes"
        targets: list[cst.BaseExpression] = []
        if isinstance(node, cst.Assign):
            targets = [t.target for t in node.targets]
        elif isinstance(node, cst.AugAssign | cst.AnnAssign | cst.For):
            targets = [node.target]
        elif isinstance(node, cst.WithItem) and node.asname is not None:
            targets = [node.asname.name]
        if any(model in _names_of(t) for t in targets):
            return "rebinds"
    return None


def _names_of(target: cst.BaseExpression) -> set[str]:
    """The dotted names a `del` or an assignment target spells (`a, self.m`: both)."""
    if isinstance(target, cst.Tuple | cst.List):
        return {n for e in target.elements for n in _names_of(e.value)}
    name = dotted_name(target)
    return {name} if name is not None else set()


def _backpropagates(node: cst.CSTNode) -> bool:
    return any(
        isinstance(n, cst.Call)
        and isinstance(n.func, cst.Attribute)
        and n.func.attr.value == "backward"
        for n in descendants(node)
    )


def _free_name(ctx: SourceContext, base: str) -> str:
    taken = {n.value for n in ctx.find(cst.Name)}
    name, index = base, 1
    while name in taken:
        index += 1
        name = f"{base}_{index}"
    return name


def _try_finally(node: cst.CSTNode, restore: str) -> cst.CSTNode:
    if not isinstance(node, cst.SimpleStatementLine | cst.BaseCompoundStatement):
        return node
    return cst.Try(
        body=cst.IndentedBlock(body=[node.with_changes(leading_lines=[])]),
        finalbody=cst.Finally(body=cst.IndentedBlock(body=list(cst.parse_module(restore).body))),
        leading_lines=node.leading_lines,
    )
