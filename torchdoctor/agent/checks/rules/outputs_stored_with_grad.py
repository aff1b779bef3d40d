"""outputs-stored-with-grad: model outputs are collected across iterations with their graph."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.accumulation import Accumulation
from torchdoctor.agent.checks.analysis.batch_outputs import in_loader_loop
from torchdoctor.agent.checks.analysis.defuse import identifier
from torchdoctor.agent.checks.analysis.model_facts import LOSS_NAME
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_scope, walk_tree
from torchdoctor.agent.models import Severity


class OutputsStoredWithGrad(Rule):
    """Detects model outputs collected across loop iterations while autograd is on:
    `preds.append(model(x))`, `outputs += [logits]`, `all_out = all_out + out`, outside any
    `torch.no_grad()`/`inference_mode()` block and without `.detach()`/`.cpu().numpy()`.

    Why it matters: every stored output keeps the graph of the forward pass that made it, so
    an evaluation or prediction loop that should use constant memory grows until it runs out.
    Outputs gathered to compute one loss that is back-propagated (in the same function, or
    kept on an object or in a global that another function's loss reads), and per-step outputs
    collected inside a module's `forward` (a recurrent layer) or another method of the module
    looping over its own blocks (`forward_intermediates`), outputs whose own loss the same
    iteration back-propagates (a step over sub-batches), are not reported, nor integer or
    boolean results (`torch.BoolTensor(...)`, `.argmax(1)`, `.long()`), which hold no graph,
    nor the outputs of a module frozen in the same scope (`model.requires_grad_(False)`) on
    inputs that carry no graph, nor what objects of a plain class of the file return (no base
    but `object`: a collator's `_MaskGenerator`s, built in a list it fills itself and called
    per batch for index tensors), whatever their name; `nn.Module`s kept the same way are
    reported.
    Nor are pytest modules: a test decoding a few steps to compare them with one parallel pass
    holds a few small graphs for the length of the test.

    Example:
        preds = []
        for x, _ in loader:
            preds.append(model(x))

    Fix: run the loop under `with torch.inference_mode():` (or `torch.no_grad()`), or store
    `model(x).detach()`.
    """

    id = "outputs-stored-with-grad"
    point = 1
    severity = Severity.MEDIUM
    title = "Model outputs stored with their autograd graph"
    items: ClassVar[tuple[str, ...]] = ("1.4",)

    def applies(self, ctx: ModuleContext) -> bool:
        return bool(ctx.flow.accumulations)

    def finish(self, ctx: ModuleContext) -> None:
        if ("append" not in ctx.source and "+" not in ctx.source) or ctx.test_module:
            return
        flow = ctx.flow
        if not flow.may_call_models:
            return  # no value here is a model's output (`graph_origin` never says 'output')
        for acc in flow.accumulations:
            if flow.grad_disabled_at(acc.node) or _in_forward(ctx, acc.node):
                continue
            if flow.graph_origin(acc.value) != "output" or _integral(ctx, acc.value):
                continue
            if not flow.carried_across_iterations(acc) or _feeds_a_loss(ctx, acc):
                continue
            if _backpropagated_in_its_iteration(ctx, acc):
                continue
            target = ast.unparse(acc.target)
            data: dict[str, object] = {"accumulator": target, "value": ast.unparse(acc.value)}
            data["fix"] = "detach"
            if element := _unpacked_position(ctx, acc.value):
                data["element"] = element
            ctx.report(
                self,
                acc.node,
                f"`{target}` collects model outputs with autograd on: each keeps its forward "
                "graph alive; detach them or run the loop under torch.inference_mode()",
                data=data,
            )


def _unpacked_position(ctx: ModuleContext, value: ast.expr) -> int:
    """Where the stored name sits in a tuple it was unpacked from (`pred, layer_inputs,
    pre_acts = net(x)`: 1 for `layer_inputs`), 0 otherwise: what a model returns besides its
    first output may be a list or a dict, which has no `.detach()`."""
    if not isinstance(value, ast.Name):
        return 0
    return max((position for _, position, _ in ctx.flow.unpackings(value)), default=0)


def _feeds_a_loss(ctx: ModuleContext, acc: Accumulation) -> bool:
    """The collected outputs go into a loss after the loop, in the same function (MixMatch's
    `logits` list, interleaved, then `ce_loss(logits_x, ...)`), or, kept on an object or in a
    global, in another function of the module: collected to be trained on, whoever runs the
    backward (a hook, a trainer)."""
    function = ctx.enclosing_function(acc.node)
    end = acc.loop.end_lineno or acc.loop.lineno
    if function is None:
        return False
    calls = [node for node in walk_tree(function) if isinstance(node, ast.Call)]
    if any(node.lineno > end and _loss_of(ctx, node, acc.target) for node in calls):
        return True
    if not _shared(ctx, acc.target):
        return False
    # kept on an object or in a global for an update function of the module (an
    # actor-critic's `critic_net.saved_values`, trained on when the episode ends)
    return any(
        isinstance(node, ast.Call) and _loss_of(ctx, node, acc.target)
        for fn in ctx.flow.nodes(ast.FunctionDef)
        if fn is not function
        for node in walk_tree(fn)
    )


def _backpropagated_in_its_iteration(ctx: ModuleContext, acc: Accumulation) -> bool:
    """A step over sub-batches (hysts' `subdivision`): the list is emptied on every
    iteration of a loop around the one that fills it (one training step), and each stored
    output's own loss is back-propagated in the iteration that stores it, which frees what
    its graph saved. The list then holds one step's outputs, gathered for its accuracy."""
    target = acc.target
    if not isinstance(acc.value, ast.Name) or not isinstance(target, ast.Name):
        return False
    outer = [a for a in ctx.ancestors(acc.loop) if isinstance(a, ast.For | ast.While)]
    reset = any(
        isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == target.id for t in node.targets)
        for loop in outer
        for node in walk_scope(loop.body)
    )
    return reset and any(
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "backward"
        and ctx.flow.computed_from(node.func.value, acc.value)
        for node in walk_scope(acc.loop.body)
    )


def _loss_of(ctx: ModuleContext, call: ast.Call, target: ast.expr) -> bool:
    """`call` is a loss computed from the accumulator `target`: a torch loss, or a project's
    own helper named like one (`ce_loss`)."""
    return (
        ctx.flow.is_loss_callee(call.func) or bool(LOSS_NAME.search(identifier(call.func)))
    ) and ctx.flow.computed_from(call, target)


def _shared(ctx: ModuleContext, target: ast.expr) -> bool:
    """An accumulator other functions can read: an attribute, or a module-level name."""
    if isinstance(target, ast.Attribute):
        return True
    return isinstance(target, ast.Name) and any(
        isinstance(stmt, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == target.id for t in stmt.targets)
        for stmt in ctx.tree.body
    )


def _in_forward(ctx: ModuleContext, node: ast.AST) -> bool:
    """Inside a module's `forward`, collected outputs are part of the graph being built (and a
    constructor's loop over its configuration builds parts: SpareNet's `Compose` calls each
    `transformer(parameters)` once); so
    in any other method of an `nn.Module` that loops over its own blocks rather than over a
    data loader (timm's `forward_intermediates` collecting each block's output)."""
    fn = ctx.enclosing_function(node)
    if fn is None:
        return False
    if fn.name in ("forward", "__init__", "__post_init__"):
        return True  # a constructor runs once: what it keeps is built, not collected per batch
    return ctx.flow.module_method(fn) and not in_loader_loop(ctx, node)


# Results that are integer or boolean tensors: they never require grad, so keep no graph.
_INTEGRAL_CONSTRUCTORS = frozenset(
    {"BoolTensor", "LongTensor", "IntTensor", "ShortTensor", "ByteTensor", "CharTensor"}
)
_INTEGRAL_RESULTS = frozenset({"bool", "long", "int", "short", "byte", "argmax", "argmin"})


def _integral(ctx: ModuleContext, value: ast.expr) -> bool:
    """`torch.BoolTensor(mask_generator(n))` (DINOv2's collate), `logits.argmax(1)`."""
    if not isinstance(value, ast.Call):
        return False
    qual = ctx.flow.qualname_of(value) or ""
    if qual.startswith("torch.") and qual.rsplit(".", 1)[-1] in _INTEGRAL_CONSTRUCTORS:
        return True
    return isinstance(value.func, ast.Attribute) and value.func.attr in _INTEGRAL_RESULTS
