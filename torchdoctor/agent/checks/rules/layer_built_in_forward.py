"""layer-built-in-forward: a layer with weights (or a dropout) constructed at every forward."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.vocabulary import DROPOUT_LAYERS, PARAMETER_LAYERS
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import FunctionNode, walk_scope
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import class_methods, kwarg, module_classes, nn_layer
from torchdoctor.agent.models import Severity

_LAYERS = PARAMETER_LAYERS | DROPOUT_LAYERS
_AFFINE = {"LayerNorm": "elementwise_affine", "GroupNorm": "affine"}
"""Norm layers whose only parameters this keyword turns off."""
_STATISTICS = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm")
_INSTANCE_NORMS = ("InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d")


class LayerBuiltInForward(Rule):
    """Detects an `nn.Module` whose `forward` (or a method `forward` calls through `self`)
    constructs a layer that owns parameters or running statistics (`nn.Linear`,
    `nn.LayerNorm`, `nn.Conv2d`, `nn.LSTM`, `nn.Parameter`...), or a dropout layer, at every
    call: `return nn.LayerNorm(d_model)(output + residual)`, `self.fc = nn.Linear(...)`.

    Why it matters: each call builds a new layer with freshly initialised weights that are not
    the model's: the optimizer (built from `model.parameters()` before the first forward)
    never updates them, `model.to(device)` never moves them and `state_dict()` never saves
    them, so that part of the network stays random and the loss plateaus for no visible
    reason. graykode/nlp-tutorial's Transformer normalised every sub-layer with a new
    `nn.LayerNorm` and projected attention with a new `nn.Linear` until it was fixed. A new
    dropout layer is in training mode: `model.eval()` never reaches it, so it drops at
    evaluation too.

    Not reported: parameter-free layers (`nn.ReLU()`, `nn.Softmax(dim=-1)`, losses), norm
    layers built without their parameters (`elementwise_affine=False`, `affine=False` and no
    running statistics), construction under a test of the attribute it fills (lazy
    initialisation: `if self.proj is None: self.proj = nn.Linear(x.size(-1), d)`, or a
    helper every call of which runs under a test of what it or the guarded branch fills:
    `if not self.mlp_init: self.create_mlp(feats)`), an
    `nn.Parameter` over what the method was given (an adversarial attack's `y_k =
    nn.Parameter(images)`: the input made optimisable), and layers built in `__init__` or its
    helpers.

    Example:
        def forward(self, Q, K, V, attn_mask):
            ...
            output = nn.Linear(n_heads * d_v, d_model)(context)
            return nn.LayerNorm(d_model)(output + residual), attn

    Fix: build the layer once in `__init__` (`self.linear = nn.Linear(n_heads * d_v,
    d_model)`) and call `self.linear(context)` in `forward`; the checkpoint then holds its
    weights (older checkpoints lack them).
    """

    id = "layer-built-in-forward"
    point = 4
    severity = Severity.HIGH
    title = "Layer built inside forward"
    items: ClassVar[tuple[str, ...]] = ("4.1",)
    triggers = Triggers(all_of=(("forward",), tuple(sorted(_LAYERS))))

    def finish(self, ctx: ModuleContext) -> None:
        classes = module_classes(ctx)
        if not classes:
            return
        per_call: dict[ast.ClassDef, dict[FunctionNode, str]] = {}
        for call in ctx.flow.nodes(ast.Call):
            func = call.func
            name = func.attr if isinstance(func, ast.Attribute) else ""
            if isinstance(func, ast.Name):
                name = func.id
            if name not in _LAYERS or nn_layer(ctx, call) != name or not _owns_state(call, name):
                continue
            method = _method_of(ctx, call)
            if method is None:
                continue
            cls = ctx.parents.get(method)
            if not isinstance(cls, ast.ClassDef) or cls.name not in classes:
                continue
            if cls not in per_call:
                per_call[cls] = _run_per_call(cls)
            via = per_call[cls].get(method)
            if via is None or _built_lazily(ctx, call, method):
                continue
            if name == "Parameter" and _wraps_an_argument(ctx, call, method):
                continue
            self._report(ctx, call, name, method, via)

    def _report(
        self, ctx: ModuleContext, call: ast.Call, name: str, method: FunctionNode, via: str
    ) -> None:
        built = ast.unparse(call)
        if len(built) > 60:
            built = f"{ast.unparse(call.func)}(...)"
        where = "`forward`" if via == method.name else f"`{method.name}` (which {via} calls)"
        stored = _stored_on_self(ctx, call)
        if name in DROPOUT_LAYERS:
            message = (
                f"`{built}` is built inside {where}: a new dropout layer is in training mode, "
                "so `model.eval()` never reaches it and it drops activations at evaluation "
                "too; build it once in `__init__`, or use "
                "`F.dropout(x, p, training=self.training)`"
            )
        elif stored is not None:
            message = (
                f"`self.{stored} = {built}` runs at every call of {where}: each call replaces "
                "the layer with freshly initialised weights, so the optimizer (built from the "
                "parameters that existed before) never trains what forward uses; build it "
                "once in `__init__`"
            )
        else:
            message = (
                f"`{built}` is built inside {where}: every call makes a new layer with "
                "freshly initialised weights that are not the model's parameters: the "
                "optimizer never updates them, `model.to(device)` never moves them and "
                "`state_dict()` never saves them; build it once in `__init__` and call it here"
            )
        ctx.report(self, call, message, data={"layer": name, "method": method.name})


def _owns_state(call: ast.Call, name: str) -> bool:
    """Whether the layer as built holds parameters or running statistics (or is a dropout)."""
    off = _AFFINE.get(name)
    if off is not None:
        return not _is_false(kwarg(call, off))
    if name in _STATISTICS:
        return not (
            _is_false(kwarg(call, "affine")) and _is_false(kwarg(call, "track_running_stats"))
        )
    if name in _INSTANCE_NORMS:  # neither by default
        return not (
            _false_or_absent(kwarg(call, "affine"))
            and _false_or_absent(kwarg(call, "track_running_stats"))
        )
    return True


def _wraps_an_argument(ctx: ModuleContext, call: ast.Call, method: FunctionNode) -> bool:
    """`nn.Parameter(images)` over what the method was given (or a value built from it): the
    caller's data made optimisable (an adversarial attack's `y_k = nn.Parameter(images)`,
    an input optimised for style transfer), not a weight of the model."""
    if not call.args:
        return False
    given = {a.arg for a in [*method.args.posonlyargs, *method.args.args, *method.args.kwonlyargs]}
    given.discard("self")
    return ctx.flow.derives_from(call.args[0], lambda n: isinstance(n, ast.Name) and n.id in given)


def _is_false(value: ast.expr | None) -> bool:
    return isinstance(value, ast.Constant) and value.value is False


def _false_or_absent(value: ast.expr | None) -> bool:
    return value is None or _is_false(value)


def _method_of(ctx: ModuleContext, node: ast.AST) -> FunctionNode | None:
    """The method of a class whose body holds `node` (through nested functions), or None."""
    function = ctx.enclosing_function(node)
    while function is not None and not isinstance(ctx.parents.get(function), ast.ClassDef):
        function = ctx.enclosing_function(function)
    return function


def _run_per_call(cls: ast.ClassDef) -> dict[FunctionNode, str]:
    """`forward` and the methods it reaches through `self.name(...)`, each with the method
    that calls it (`forward` itself for `forward`)."""
    methods = class_methods(cls)
    forward = methods.get("forward")
    if forward is None:
        return {}
    reached: dict[FunctionNode, str] = {forward: "forward"}
    pending = [forward]
    while pending:
        caller = pending.pop()
        for node in ast.walk(caller):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            target = node.func
            if not (isinstance(target.value, ast.Name) and target.value.id == "self"):
                continue
            callee = methods.get(target.attr)
            if callee is not None and callee not in reached and callee.name != "__init__":
                reached[callee] = caller.name
                pending.append(callee)
    return reached


def _outermost(ctx: ModuleContext, call: ast.Call) -> ast.expr:
    """The layer as stored: `nn.Linear(...).to(x.device)` for the call inside it."""
    node: ast.expr = call
    while True:
        attribute = ctx.parents.get(node)
        method = ctx.parents.get(attribute) if isinstance(attribute, ast.Attribute) else None
        if not isinstance(method, ast.Call) or method.func is not attribute:
            return node
        node = method


def _stored_on_self(ctx: ModuleContext, call: ast.Call) -> str | None:
    """`self.fc = nn.Linear(...)` -> 'fc'."""
    value = _outermost(ctx, call)
    parent = ctx.parents.get(value)
    if not isinstance(parent, ast.Assign) or parent.value is not value:
        return None
    for target in parent.targets:
        if isinstance(target, ast.Attribute) and _on_self(target.value):
            return target.attr
    return None


def _built_lazily(ctx: ModuleContext, call: ast.Call, method: FunctionNode) -> bool:
    """Built under a test of whether it was built already: `if self.proj is None:`,
    `if not hasattr(self, "proj"):`, `if key not in self.heads:` with the layer stored on
    `self` (an attribute, or an item of a container attribute)."""
    if _only_called_under_a_state_test(ctx, method):
        return True
    value = _outermost(ctx, call)
    parent = ctx.parents.get(value)
    if not isinstance(parent, ast.Assign | ast.AnnAssign) or parent.value is not value:
        return False
    targets = parent.targets if isinstance(parent, ast.Assign) else [parent.target]
    if not any(_on_self(target) for target in targets):
        return False
    node: ast.AST | None = parent
    while node is not None and node is not method:
        node = ctx.parents.get(node)
        if isinstance(node, ast.If | ast.IfExp) and _tests_state(node.test):
            return True
    return _only_called_under_a_state_test(ctx, method)


def _only_called_under_a_state_test(ctx: ModuleContext, method: FunctionNode) -> bool:
    """Every `self.method(...)` of the class runs under a test of an attribute that the
    method or the tested branch fills: built once, on the first batch, where its sizes come
    from the data (CUT's `if self.use_mlp and not self.mlp_init: self.create_mlp(feats)`,
    `create_mlp` ending in `self.mlp_init = True`; `if key not in self.mlps: self.mlps[key] =
    self.create_mlp(x)`)."""
    cls = ctx.parents.get(method)
    if not isinstance(cls, ast.ClassDef):
        return False
    calls = [
        call
        for call in ctx.flow.calls_named([method.name])
        if isinstance(call.func, ast.Attribute)
        and _on_self(call.func.value)
        and any(owner is cls for owner in ctx.ancestors(call))
    ]
    own = _self_attributes_filled(method.body)
    return bool(calls) and all(_under_a_test_of(ctx, call, own) for call in calls)


def _self_attributes_filled(body: list[ast.stmt]) -> set[str]:
    """`x` of each `self.x = ...` or `self.x[k] = ...` in `body`."""
    filled: set[str] = set()
    for node in walk_scope(body):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                while isinstance(target, ast.Subscript):
                    target = target.value
                if isinstance(target, ast.Attribute) and _on_self(target.value):
                    filled.add(target.attr)
    return filled


def _under_a_test_of(ctx: ModuleContext, node: ast.AST, flags: set[str]) -> bool:
    """`node` runs in the body of an `if` whose test reads `self.<attribute>` for one of
    `flags` or one the body fills."""
    current = ctx.parents.get(node)
    while current is not None and not isinstance(current, ast.FunctionDef | ast.ClassDef):
        if isinstance(current, ast.If):
            filled = flags | _self_attributes_filled(current.body)
            if any(
                isinstance(read, ast.Attribute) and read.attr in filled and _on_self(read.value)
                for read in ast.walk(current.test)
            ):
                return True
        current = ctx.parents.get(current)
    return False


def _on_self(target: ast.expr) -> bool:
    """`self`, `self.x`, `self.heads[k]`."""
    while isinstance(target, ast.Attribute | ast.Subscript):
        target = target.value
    return isinstance(target, ast.Name) and target.id == "self"


def _tests_state(test: ast.expr) -> bool:
    """A test that reads `self` (`self.proj is None`, `key not in self.heads`) or asks
    `hasattr` / `getattr`."""
    for node in ast.walk(test):
        if isinstance(node, ast.Name) and node.id in ("self", "hasattr", "getattr"):
            return True
    return False
