"""module-list-not-registered: sub-modules kept in a plain list/dict attribute."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.models import Severity

_CONTAINERS = {
    "list": "nn.ModuleList",
    "dict": "nn.ModuleDict",
}


class ModuleListNotRegistered(Rule):
    """Detects, in the `__init__` of an `nn.Module` subclass, an attribute assigned a plain
    list, tuple, dict or comprehension whose elements are modules (`nn.*` layers, local
    `nn.Module` classes) or `nn.Parameter`s: `self.layers = [nn.Linear(8, 8) for _ in ...]`.

    Why it matters: PyTorch registers only attributes that are modules, parameters or their
    containers. Layers in a Python list are invisible to `parameters()` (never trained, not
    passed to the optimizer), to `.to(device)`/`.cuda()` (device mismatch at run time), to
    `state_dict()` (not saved) and to `train()/eval()`.

    Example:
        self.blocks = [Block(dim) for _ in range(depth)]

    Fix: `self.blocks = nn.ModuleList([...])` (`nn.ModuleDict` for dicts,
    `nn.ParameterList`/`nn.ParameterDict` for parameters). State-dict keys change, so old
    checkpoints need a key mapping.
    """

    id = "module-list-not-registered"
    point = 1
    severity = Severity.HIGH
    title = "Sub-modules in a plain list are not registered"
    items: ClassVar[tuple[str, ...]] = ("1.1",)

    def applies(self, ctx: ModuleContext) -> bool:
        return "Module" in ctx.source and bool(ctx.flow.module_classes)

    def finish(self, ctx: ModuleContext) -> None:
        if "Module" not in ctx.source:
            return
        for _, init in ctx.flow.module_inits():
            self._check_init(ctx, init)

    def _check_init(self, ctx: ModuleContext, init: ast.FunctionDef) -> None:
        for node in ast.walk(init):
            if not isinstance(node, ast.Assign | ast.AnnAssign) or node.value is None:
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if not any(
                isinstance(t, ast.Attribute)
                and isinstance(t.value, ast.Name)
                and t.value.id == "self"
                for t in targets
            ):
                continue
            kind = _container_kind(node.value)
            if kind is None or not any(_is_module_ctor(ctx, e) for e in _elements(node.value)):
                continue
            ctx.report(
                self,
                node,
                f"these modules/parameters sit in a plain {kind}: they are not registered "
                f"(not trained, not moved by .to(), not saved); use {_CONTAINERS[kind]}",
                data={"container": kind},
            )


def _container_kind(value: ast.expr) -> str | None:
    if isinstance(value, ast.List | ast.Tuple | ast.ListComp | ast.GeneratorExp):
        return "list"
    if isinstance(value, ast.Dict | ast.DictComp):
        return "dict"
    return None


def _elements(value: ast.expr) -> list[ast.expr]:
    if isinstance(value, ast.List | ast.Tuple):
        return list(value.elts)
    if isinstance(value, ast.ListComp | ast.GeneratorExp):
        return [value.elt]
    if isinstance(value, ast.Dict):
        return [v for v in value.values if v is not None]
    if isinstance(value, ast.DictComp):
        return [value.value]
    return []


def _is_module_ctor(ctx: ModuleContext, expr: ast.expr) -> bool:
    if not isinstance(expr, ast.Call):
        return False
    if isinstance(expr.func, ast.Name) and expr.func.id in ctx.flow.module_classes:
        return True
    qual = ctx.flow.qualname_of(expr) or ""
    last = qual.rsplit(".", 1)[-1]
    return (
        qual.startswith("torch.nn.")
        and last[:1].isupper()
        and last
        not in (
            "ModuleList",
            "ModuleDict",
            "ParameterList",
            "ParameterDict",
        )
    )
