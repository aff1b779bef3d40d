"""buffer-updated-with-graph: a registered buffer written in forward with autograd on."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.defuse import identifier
from torchdoctor.agent.checks.analysis.gradmode import grad_may_be_off
from torchdoctor.agent.checks.analysis.vocabulary import NON_GRAD_TORCH
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_scope, walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_INPLACE_WRITES = frozenset({"copy_", "add_", "sub_", "mul_", "lerp_", "addcmul_", "set_"})
_CUTS = frozenset({"detach", "detach_", "item", "tolist", "numpy", "data"})
_METADATA = frozenset({"device", "dtype", "shape", "ndim", "is_cuda", "requires_grad"})


class BufferUpdatedWithGraph(Rule):
    """Detects a buffer registered with `register_buffer` that a module's forward pass (the
    `forward` method or a method it calls through `self`) writes with a value computed with
    autograd on: `self.running_mean = m * self.running_mean + (1 - m) * x.mean(0)`,
    `self.sv[i][:] = sv` with `sv` from a power iteration over the weight,
    `self.queue[:, ptr:ptr + n] = keys.T`, `self.ema.copy_(value)`, a buffer registered again
    (`self.register_buffer(name, old * decay + new * (1 - decay))`); not under `no_grad()`, in
    no method decorated with it, and with no `.detach()` / `.data` / `.item()` on the value.
    Buffers named through a property that returns `getattr(self, name)` for registered
    names are followed.

    Why it matters: the buffer now holds the value's graph, and the next step's value is
    built from the buffer: each iteration's graph stays reachable from the module, so memory
    grows until the run dies (BigGAN's "memory leak in SN code"), or backward() reaches into
    a freed graph and fails ("Trying to backward through the graph a second time").

    Not reported: writes under `torch.no_grad()` or in a method decorated with it, values
    detached or turned into numbers, constants and counters (`self.num_batches_tracked += 1`),
    a buffer only scaled by number hyper-parameters (`self.decay` set from `decay: float`,
    or from an unannotated `decay` the class only uses as a factor) and updated from values
    with no graph (one-hot codes scattered from an `argmin`: a VQ-VAE's EMA cluster sizes),
    writes in `__init__`. In-place chains (`self.b.mul_(m).add_(v)`) write the buffer too.

    Example:
        def forward(self, x):
            if self.training:
                self.running_mean = 0.9 * self.running_mean + 0.1 * x.mean(0)
            return (x - self.running_mean) / self.scale

    Fix: update the buffer under `with torch.no_grad():` (or from `value.detach()`).
    """

    id = "buffer-updated-with-graph"
    point = 1
    severity = Severity.HIGH
    title = "Buffer updated with its autograd graph"
    items: ClassVar[tuple[str, ...]] = ("1.4",)
    triggers = Triggers(("register_buffer",))

    def applies(self, ctx: ModuleContext) -> bool:
        return "register_buffer" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        in_forward = _forward_methods(ctx)
        registrations = _registrations(ctx)
        for cls in ctx.flow.nodes(ast.ClassDef):
            if not isinstance(cls, ast.ClassDef) or id(cls) not in registrations:
                continue
            # a KV cache (`cache_k`, `kv_cache`) grows during generation, run under no_grad
            # by its caller; training runs the model with the cache off
            buffers = {
                b
                for b in _buffer_attributes(cls, registrations[id(cls)])
                if "cache" not in b.lower()
            }
            if not buffers:
                continue
            numbers = _number_attributes(ctx, cls)
            for method in cls.body:
                if not isinstance(method, ast.FunctionDef) or method.name not in in_forward:
                    continue
                for write, value in _buffer_writes(method, buffers):
                    if grad_may_be_off(ctx, write):
                        continue
                    if not _carries_graph(ctx, value, method, buffers | numbers):
                        continue
                    ctx.report(
                        self,
                        write,
                        f"`{ast.unparse(value)}` is written into a registered buffer during "
                        "the forward pass with autograd on: the buffer keeps this step's "
                        "graph, and every later step's graph is built on it",
                    )


def _forward_methods(ctx: ModuleContext) -> set[str]:
    """`forward` and the methods a `forward` of the module calls through `self`,
    transitively (`F.conv2d(x, self.W_(), ...)` in a spectral-norm layer's forward)."""
    methods: dict[str, list[ast.FunctionDef]] = {}
    for cls in ctx.flow.nodes(ast.ClassDef):
        if isinstance(cls, ast.ClassDef):
            for fn in cls.body:
                if isinstance(fn, ast.FunctionDef):
                    methods.setdefault(fn.name, []).append(fn)
    found = {"forward"}
    frontier = ["forward"]
    while frontier:
        name = frontier.pop()
        for fn in methods.get(name, []):
            for node in walk_scope(fn.body):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and identifier(node.func.value) == "self"
                    and node.func.attr in methods
                    and node.func.attr not in found
                ):
                    found.add(node.func.attr)
                    frontier.append(node.func.attr)
    return found


def _registrations(ctx: ModuleContext) -> dict[int, list[ast.Call]]:
    """Class id -> the `self.register_buffer(name, ...)` calls anywhere inside it (a nested
    class's count for the classes around it too), read from the module's call index: most
    classes register none, and need no walk."""
    found: dict[int, list[ast.Call]] = {}
    for call in ctx.flow.calls_named(("register_buffer",)):
        if isinstance(call.func, ast.Attribute) and call.args:
            for owner in ctx.ancestors(call):
                if isinstance(owner, ast.ClassDef):
                    found.setdefault(id(owner), []).append(call)
    return found


def _buffer_attributes(cls: ast.ClassDef, registrations: list[ast.Call]) -> set[str]:
    """Attributes that hold registered buffers: the literal names `register_buffer` gets,
    and, when a name is computed (`'sv%d' % i`), the properties returning `getattr(self,
    ...)`, which hand out those buffers."""
    literal: set[str] = set()
    computed = False
    for node in registrations:
        name = node.args[0]
        if isinstance(name, ast.Constant) and isinstance(name.value, str):
            literal.add(name.value)
        else:
            computed = True
    if computed:
        for fn in cls.body:
            if (
                isinstance(fn, ast.FunctionDef)
                and any(identifier(d) == "property" for d in fn.decorator_list)
                and any(
                    isinstance(n, ast.Call) and identifier(n.func) == "getattr"
                    for n in walk_tree(fn)
                )
            ):
                literal.add(fn.name)
    return literal


def _buffer_writes(method: ast.FunctionDef, buffers: set[str]) -> list[tuple[ast.AST, ast.expr]]:
    """(write, value) pairs: `self.b = v`, `self.b[...] = v`, `self.b += v`,
    `self.b.copy_(v)`."""
    found: list[tuple[ast.AST, ast.expr]] = []
    for node in walk_scope(method.body):
        if isinstance(node, ast.Assign):
            if any(_buffer_of(t, buffers) for t in node.targets):
                found.append((node, node.value))
        elif isinstance(node, ast.AugAssign) and _buffer_of(node.target, buffers):
            found.append((node, node.value))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _INPLACE_WRITES
            and _buffer_of(_inplace_receiver(node.func.value), buffers)
        ):
            found.extend((node, arg) for arg in node.args)
        elif (registered := _registered_value(node)) is not None:
            found.append((node, registered))
    return found


def _registered_value(node: ast.AST) -> ast.expr | None:
    """The tensor of `self.register_buffer(name, value)` (or `tensor=value`): registering a
    buffer again in the forward pass replaces it with `value` (a running statistic kept by
    re-registration: vector-quantize-pytorch's `update_with_decay`)."""
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "register_buffer"
        and identifier(node.func.value) == "self"
    ):
        return None
    if len(node.args) > 1:
        return node.args[1]
    return next((k.value for k in node.keywords if k.arg == "tensor"), None)


def _inplace_receiver(target: ast.expr) -> ast.expr:
    """The tensor a chain of in-place calls writes: `self.b` in `self.b.mul_(m).add_(v)`
    (each in-place method returns its receiver)."""
    while (
        isinstance(target, ast.Call)
        and isinstance(target.func, ast.Attribute)
        and target.func.attr in _INPLACE_WRITES
    ):
        target = target.func.value
    return target


def _number_attributes(ctx: ModuleContext, cls: ast.ClassDef) -> set[str]:
    """Attributes that only ever hold a number: `self.momentum = momentum` where `__init__`
    declares `momentum=0.1` (or `momentum: float`), `self.decay = 0.99`, and an unannotated
    `__init__` argument stored as it came that the class only ever uses as a factor
    (`self._ema_w * self._decay`, `1 - self._decay`: zalando's VQ-VAE), never calls, indexes,
    reads an attribute of or multiplies as a matrix. A hyper-parameter holds no graph, unlike
    `self.weight`."""
    numeric: set[str] = set()
    untyped: set[str] = set()
    for fn in cls.body:
        if isinstance(fn, ast.FunctionDef) and fn.name == "__init__":
            args = fn.args
            positional = [*args.posonlyargs, *args.args]
            first_defaulted = len(positional) - len(args.defaults)
            defaults = {
                a.arg: d for a, d in zip(positional[first_defaulted:], args.defaults, strict=True)
            }
            defaults.update(
                (a.arg, d)
                for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)
                if d is not None
            )
            for arg in [*positional, *args.kwonlyargs]:
                default = defaults.get(arg.arg)
                if _is_number(default) or (
                    arg.annotation is not None and identifier(arg.annotation) in ("float", "int")
                ):
                    numeric.add(arg.arg)
                elif arg.annotation is None and default is None:
                    untyped.add(arg.arg)
    kinds: dict[str, bool] = {}
    factors = _factor_only_attributes(ctx, cls)
    for node in walk_tree(cls):
        if not isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for target in targets:
            if isinstance(target, ast.Attribute) and identifier(target.value) == "self":
                value = node.value
                number = _is_number(value) or (
                    isinstance(value, ast.Name)
                    and (value.id in numeric or (value.id in untyped and target.attr in factors))
                )
                kinds[target.attr] = kinds.get(target.attr, True) and number
    return {name for name, number in kinds.items() if number}


def _factor_only_attributes(ctx: ModuleContext, cls: ast.ClassDef) -> set[str]:
    """`self.x` attributes every read of which is an operand of element-wise arithmetic
    or a comparison: what a scalar hyper-parameter is used for, and little else is."""
    verdict: dict[str, bool] = {}
    for node in walk_tree(cls):
        if not (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Load)
            and identifier(node.value) == "self"
        ):
            continue
        parent = ctx.parents.get(node)
        factor = (
            isinstance(parent, ast.BinOp) and not isinstance(parent.op, ast.MatMult)
        ) or isinstance(parent, ast.UnaryOp | ast.Compare)
        verdict[node.attr] = verdict.get(node.attr, True) and factor
    return {name for name, factor in verdict.items() if factor}


def _is_number(node: ast.expr | None) -> bool:
    if isinstance(node, ast.UnaryOp):
        node = node.operand
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
    )


def _buffer_of(target: ast.expr, buffers: set[str]) -> bool:
    """`self.b`, `self.b[i]`, `self.b[i][:]` for a buffer attribute `b`."""
    while isinstance(target, ast.Subscript):
        target = target.value
    return (
        isinstance(target, ast.Attribute)
        and identifier(target.value) == "self"
        and target.attr in buffers
    )


def _carries_graph(
    ctx: ModuleContext, value: ast.expr, method: ast.FunctionDef, buffers: set[str]
) -> bool:
    """The value is computed from the method's inputs or from the module's other attributes
    (its parameters: `self.weight`), through local names, and nothing on the way cuts the
    graph; a value made of constants, factories and the buffers themselves holds none."""
    if isinstance(value, ast.Call):
        qual = ctx.flow.qualname_of(value) or ""
        if qual.startswith("torch.") and qual.split(".", 1)[1] in NON_GRAD_TORCH:
            return False  # `torch.bincount(x)`, `torch.argmax(...)`: integers, no graph
    params = {a.arg for a in [*method.args.args, *method.args.kwonlyargs]} - {"self"}
    frontier: list[ast.expr] = [value]
    seen: set[str] = set()
    computed = False
    while frontier and len(seen) < 32:
        expr = frontier.pop()
        # `h.device`, `x.shape[0]`: metadata of a tensor, never its graph
        metadata = {
            id(node.value)
            for node in walk_tree(expr)
            if isinstance(node, ast.Attribute) and node.attr in _METADATA
        }
        for node in walk_tree(expr):
            if id(node) in metadata:
                continue
            if isinstance(node, ast.Attribute) and node.attr in _CUTS:
                return False
            if (
                isinstance(node, ast.Attribute)
                and identifier(node.value) == "self"
                and node.attr not in buffers
                and not isinstance(ctx.parents.get(node), ast.Call)
            ):
                computed = True  # `self.weight`, not a method call `self.f(...)`
            if isinstance(node, ast.Name) and node.id not in seen:
                seen.add(node.id)
                computed = computed or node.id in params
                frontier.extend(  # a value bound under no_grad holds no graph (a teacher's)
                    d for d in ctx.flow.definitions(node) if not ctx.flow.grad_disabled_at(d)
                )
    return computed
