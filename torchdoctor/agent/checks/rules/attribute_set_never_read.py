"""attribute-set-never-read: a setting written on an object under a near-miss of its name."""

from __future__ import annotations

import ast
from typing import Any, ClassVar

from torchdoctor.agent.checks.analysis.project import (
    attribute_reads,
    class_symbols,
    module_name,
    publish_attribute_reads,
)
from torchdoctor.agent.checks.analysis.spelling import near_miss
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.models import Severity

_CLASSES = "attribute-set-never-read:classes"
_CANDIDATES = "attribute-set-never-read:candidates"
_PLAIN_BASES = frozenset({"object", "Module", "nn.Module", "torch.nn.Module"})
_DYNAMIC = frozenset({"__getattr__", "__setattr__", "__getattribute__", "__slots__"})
_MODULE_NAMES = frozenset({"training", "forward", "dump_patches", "call_super_init"})
"""`nn.Module`'s own public attributes a caller may set (private ones start with `_`)."""


class AttributeSetNeverRead(Rule):
    """Detects `obj.name = value` on an instance of a project class (`enc1 = Encoder(...)`)
    whose class never reads `self.name` and nothing in the project reads `.name`, while the
    class does read a near miss of it (`self.num_sample` for `num_samples`: a plural, a
    trailing underscore, one letter apart).

    Why it matters: Python accepts any new attribute, so the typo raises nothing: the setting
    the line means to change keeps its default. graphsage-simple's `enc1.num_samples = 5` left
    the encoders sampling 10 neighbours (the constructor's `num_sample`), not the 5 the
    experiment states.

    Not reported: a class with `__getattr__`, `__setattr__` or `__slots__`; a class whose
    bases are other than `object` / `nn.Module` (a base may read the name); an attribute any
    file reads; a name of `nn.Module`'s own; a name with no near miss among the class's reads
    (a new attribute on purpose).

    Example:
        enc1 = Encoder(features, 1433, 128, adj_lists, agg1, num_sample=10)
        enc1.num_samples = 5

    Fix: the name the class reads (`enc1.num_sample = 5`), or the constructor's argument.
    """

    id = "attribute-set-never-read"
    point = 1
    severity = Severity.HIGH
    title = "Attribute set under a misspelt name"
    items: ClassVar[tuple[str, ...]] = ("1.1",)

    def finish(self, ctx: ModuleContext) -> None:
        here = module_name(ctx.path)
        classes = _class_names(ctx)
        if classes:
            ctx.facts[_CLASSES] = {f"{here}.{cls.name}": info for cls, info in classes.items()}
        publish_attribute_reads(ctx)
        candidates = []
        for assign in ctx.flow.nodes(ast.Assign):
            assert isinstance(assign, ast.Assign)
            for target in assign.targets:
                if not (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)):
                    continue
                if target.value.id == "self" or not _settable(target.attr):
                    continue
                symbols = _instance_of(ctx, target.value, here)
                if len(symbols) != 1:
                    continue
                found = ctx.finding(self, assign, "", data={"attribute": target.attr})
                if found is not None:
                    candidates.append(
                        {
                            "class": symbols[0],
                            "attr": target.attr,
                            "object": target.value.id,
                            "finding": found.model_dump(mode="json"),
                        }
                    )
        if candidates:
            ctx.facts[_CANDIDATES] = candidates

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        classes: dict[str, dict[str, Any]] = {}
        for module in facts.values():
            classes.update(module.get(_CLASSES, {}))
        reads = attribute_reads(facts)
        found: list[RawFinding] = []
        for module in facts.values():
            for candidate in module.get(_CANDIDATES, []):
                info = classes.get(candidate["class"])
                attr = candidate["attr"]
                if info is None or info["dynamic"] or attr in info["names"] or attr in reads:
                    continue
                near = sorted(n for n in info["read"] if near_miss(attr, n))
                if not near:
                    continue
                name = candidate["class"].rsplit(".", 1)[-1]
                message = (
                    f"`{candidate['object']}.{attr}` is set, but `{name}` never reads "
                    f"`self.{attr}` (nor does any file read `.{attr}`); it reads "
                    f"`self.{near[0]}`: the setting keeps its default"
                )
                raw = RawFinding.model_validate(candidate["finding"])
                found.append(
                    raw.model_copy(
                        update={"message": message, "data": {**raw.data, "read": near[0]}}
                    )
                )
        return found


def _settable(attr: str) -> bool:
    """Not a private name nor one of `nn.Module`'s own."""
    return not attr.startswith("_") and attr not in _MODULE_NAMES


def _class_names(ctx: ModuleContext) -> dict[ast.ClassDef, dict[str, Any]]:
    """Per class: what it reads of itself (`self.x`), every name it defines or assigns, and
    whether a name it does not know may still mean something to it. One pass over the
    module's indexed nodes, each charged to its innermost class (a `self` inside a nested
    class is that class's)."""
    read: dict[ast.ClassDef, set[str]] = {}
    names: dict[ast.ClassDef, set[str]] = {}
    dynamic: set[ast.ClassDef] = set()
    for cls in ctx.flow.nodes(ast.ClassDef):
        read[cls], names[cls] = set(), set()
        if any(
            not (isinstance(b, ast.Name | ast.Attribute) and ast.unparse(b) in _PLAIN_BASES)
            for b in cls.bases
        ):
            dynamic.add(cls)
    if not read:
        return {}
    functions: list[ast.FunctionDef | ast.AsyncFunctionDef] = [
        *ctx.flow.nodes(ast.FunctionDef),
        *ctx.flow.nodes(ast.AsyncFunctionDef),
    ]
    for function in functions:
        owner = ctx.enclosing_class(function)
        if owner is not None:
            names[owner].add(function.name)
            if function.name in _DYNAMIC:
                dynamic.add(owner)
    source = ctx.source
    if not source.isascii() or "__slots__" in source:  # NFKC may spell it otherwise
        for name in ctx.flow.nodes(ast.Name):
            if name.id == "__slots__" and (owner := ctx.enclosing_class(name)) is not None:
                dynamic.add(owner)
    for call in ctx.flow.calls_named(("getattr", "setattr")):
        callee = call.func
        named = isinstance(callee, ast.Name) and callee.id in ("getattr", "setattr")
        if named and (owner := ctx.enclosing_class(call)) is not None:
            dynamic.add(owner)  # a name built at run time
    for node in ctx.flow.nodes(ast.Attribute):
        if _on_self(node) and (owner := ctx.enclosing_class(node)) is not None:
            (read[owner] if _reads(node) else names[owner]).add(node.attr)
    classes = {
        cls: {
            "read": sorted(read[cls]),
            "names": sorted(read[cls] | names[cls]),
            "dynamic": cls in dynamic,
        }
        for cls in read
    }
    return classes


def _reads(node: ast.Attribute) -> bool:
    return not isinstance(node.ctx, ast.Store)


def _on_self(node: ast.Attribute) -> bool:
    return isinstance(node.value, ast.Name) and node.value.id == "self"


def _instance_of(ctx: ModuleContext, obj: ast.Name, here: str) -> list[str]:
    """The project classes `obj` is built from (`enc1 = Encoder(...)`), local or imported."""
    symbols: list[str] = []
    for call in ctx.flow.constructors(obj):
        if isinstance(call.func, ast.Name) and call.func.id in ctx.flow.classes:
            symbols.append(f"{here}.{call.func.id}")
        else:
            symbols += class_symbols(ctx, call.func)
    return sorted(set(symbols))
