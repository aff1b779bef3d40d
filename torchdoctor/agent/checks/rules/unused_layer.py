"""unused-layer: a sub-module is created but never used."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.vocabulary import PARAMETER_FREE_LAYERS
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import nodes_of, walk_tree
from torchdoctor.agent.checks.patterns import (
    class_methods,
    module_class_defs,
    module_classes,
    nn_layer,
)
from torchdoctor.agent.models import Severity

_NOT_LAYERS = frozenset({"Parameter", "ParameterList", "ParameterDict", "Buffer"})
_INTROSPECTION = ("children(", "modules(", "_modules", "getattr(self", "__dict__", "named_")


class UnusedLayer(Rule):
    """Detects a layer assigned in an `nn.Module`'s `__init__` (`self.fc2 = nn.Linear(...)`)
    whose attribute is never read anywhere in the module's source.

    Why it matters: the layer's parameters are allocated, saved, moved to the device and handed
    to the optimizer, but receive no gradient: wasted memory, a misleading parameter count,
    and DistributedDataParallel fails unless `find_unused_parameters=True`. Often it is a sign
    that `forward` skips a layer the author meant to use; a parameter-free one (`nn.Dropout`,
    an activation, a pooling layer) means its regularisation or non-linearity never happens.

    Example:
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(784, 128)
            self.fc2 = nn.Linear(128, 10)

        def forward(self, x):
            return self.fc1(x)

    Not reported: modules that never run (no `forward`, or one that is only `...`, `pass` or
    `raise NotImplementedError`): parameter containers for state-dict, device or sharding
    tests; subclasses of a model class imported from elsewhere whose methods hand over to
    the base's (`return super().forward(...)` in a class over transformers'
    `LlamaForCausalLM`, which reads `self.lm_head` itself); containers built empty and never
    read (`nn.ModuleList()`: nothing in them); and pytest modules (a test's stand-in model
    holds a layer so that it has parameters for the optimizer or the checkpoint under test).

    Fix: use the layer in `forward`, or delete it.
    """

    id = "unused-layer"
    point = 4
    severity = Severity.MEDIUM
    title = "Layer defined but never used"
    items: ClassVar[tuple[str, ...]] = ("4.1",)

    def applies(self, ctx: ModuleContext) -> bool:
        return "__init__" in ctx.source and not ctx.test_module and bool(module_classes(ctx))

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx) or "self." not in ctx.source:
            return
        read: set[str] | None = None
        for cls in module_class_defs(ctx):
            methods = class_methods(cls)
            init = methods.get("__init__")
            if init is None or any(k in ctx.segment(cls) for k in _INTROSPECTION):
                continue
            if not _runs(ctx, cls):
                continue  # a container of parameters (state-dict, device or sharding tests)
            if _hands_over_to_an_imported_base(ctx, cls):
                continue  # the base's own methods read what it names (`self.lm_head`)
            for stmt in walk_tree(init):
                if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1:
                    continue
                target = stmt.targets[0]
                if not (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id == "self"
                ):
                    continue
                layer = nn_layer(ctx, stmt.value)
                if not layer or layer in _NOT_LAYERS or _empty_container(stmt.value, layer):
                    continue
                if read is None:
                    read = _attributes_read(ctx)
                if target.attr not in read:
                    effect = (
                        f"the {layer} it stands for is never applied"
                        if layer in PARAMETER_FREE_LAYERS or layer.endswith("Loss")
                        else "its parameters are allocated and trained for nothing"
                    )
                    ctx.report(
                        self,
                        stmt,
                        f"`self.{target.attr}` ({layer}) is created but never used: {effect}",
                    )


_CONTAINERS = frozenset({"ModuleList", "ModuleDict", "Sequential"})


def _empty_container(value: ast.expr, layer: str) -> bool:
    """`nn.ModuleList()` built empty (and, unread, never filled): it holds nothing, so
    nothing is allocated or skipped (demucs' leftover `self.skip_scales`)."""
    return (
        layer in _CONTAINERS
        and isinstance(value, ast.Call)
        and not value.args
        and not value.keywords
    )


def _runs(ctx: ModuleContext, cls: ast.ClassDef, depth: int = 0) -> bool:
    """The module computes something: its `forward`, or one inherited from a class of this
    file or of another library, has a body. None at all, or only `...`, `pass`, a docstring or
    `raise NotImplementedError`, means it is never run, so no layer in it is skipped."""
    forward = class_methods(cls).get("forward")
    if forward is not None:
        return _computes(forward)
    local = {c.name: c for c in module_class_defs(ctx)}
    for base in cls.bases:
        name = ast.unparse(base)
        if name in local and depth < 5:
            if _runs(ctx, local[name], depth + 1):
                return True
        elif not (ctx.qualname(base) or name).endswith(("nn.Module", "modules.module.Module")):
            return True  # a base whose forward is not seen here
    return False


def _hands_over_to_an_imported_base(ctx: ModuleContext, cls: ast.ClassDef) -> bool:
    """A class built on another library's or file's model class whose methods run the base's
    own (`return super().forward(...)`: LLaVA's `LlavaLlamaForCausalLM` over transformers'
    `LlamaForCausalLM`): the base's code, not seen here, reads the layers it expects under
    fixed names (`self.lm_head`), which the subclass only builds."""
    local = {c.name for c in module_class_defs(ctx)}
    imported = [
        base
        for base in cls.bases
        if ast.unparse(base) not in local
        and not (ctx.qualname(base) or ast.unparse(base)).endswith(
            ("nn.Module", "modules.module.Module")
        )
    ]
    if not imported:
        return False
    return any(
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Call)
        and isinstance(node.func.value.func, ast.Name)
        and node.func.value.func.id == "super"
        and node.func.attr != "__init__"
        for node in ast.walk(cls)
    )


def _computes(forward: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for stmt in forward.body:
        if isinstance(stmt, ast.Pass) or (
            isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
        ):
            continue
        if isinstance(stmt, ast.Raise) and "NotImplementedError" in ast.unparse(stmt):
            continue
        return True
    return False


def _attributes_read(ctx: ModuleContext) -> set[str]:
    names: set[str] = set()
    for node in nodes_of(ctx, ast.Attribute, ast.Constant):
        if isinstance(node, ast.Attribute) and not isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)
    return names
