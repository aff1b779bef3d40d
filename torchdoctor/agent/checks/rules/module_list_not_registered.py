"""module-list-not-registered: sub-modules kept in a plain list/dict attribute."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.vocabulary import LAYER_LIBRARY_PREFIXES, MODULE_CONTAINERS
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_scope, walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import self_attribute, stateless_module
from torchdoctor.agent.models import Severity

_CONTAINERS = {
    "list": "nn.ModuleList",
    "dict": "nn.ModuleDict",
}


class ModuleListNotRegistered(Rule):
    """Detects, in the `__init__` of an `nn.Module` subclass, an attribute assigned a plain
    list, tuple, dict or comprehension whose elements are modules (`nn.*` layers, local
    `nn.Module` classes) or `nn.Parameter`s: `self.layers = [nn.Linear(8, 8) for _ in ...]`,
    an empty list the `__init__` then appends modules to, a plain list as a value of
    `nn.ModuleDict(dict(h=[...]))`, or a plain list that a function of the same file fills
    with layers and returns (`self.module_list = create_modules(cfg)`, a Darknet port's
    config parser). Not reported: a list that `__init__` wraps later
    (`self.rnns = nn.ModuleList(self.rnns)`), whose modules another attribute registers
    (`self.layer = nn.Sequential(*self.layer_list)`), whose elements `__init__` registers one
    by one (`self.add_module(name, block)` in a loop over the list, a method of the class
    calling `register_parameter` for each layer's parameters), or whose modules hold no
    parameter, no buffer and no dropout (activations, pooling, a local class building only those:
    Autoformer's `[moving_avg(k, stride=1) for k in kernel_size]`).

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
    triggers = Triggers(("Module",))

    def applies(self, ctx: ModuleContext) -> bool:
        return "Module" in ctx.source and bool(ctx.flow.module_classes)

    def finish(self, ctx: ModuleContext) -> None:
        if "Module" not in ctx.source:
            return
        helpers = {  # a candidate only: `_returned_plain_list` decides (the source's text,
            # not `ast.unparse`, which cost more than the rest of the rule on large modules)
            node.name: node
            for node in ctx.tree.body
            if isinstance(node, ast.FunctionDef) and "append" in ctx.segment(node)
        }
        for name, init in ctx.flow.module_inits():
            builders = [init, *_setup_methods(ctx.flow.classes[name], init)]
            wrapped: list[set[str]] = []  # found on the first plain container only
            for fn in builders:
                self._check_init(ctx, fn, builders, wrapped)
            if helpers:
                self._check_built_by_helper(ctx, init, helpers)

    def _check_built_by_helper(
        self, ctx: ModuleContext, init: ast.FunctionDef, helpers: dict[str, ast.FunctionDef]
    ) -> None:
        """`self.module_list = create_modules(cfg)` (or one target of a tuple unpacking),
        where `create_modules`, a function of this file, returns a plain list it appended
        modules to."""
        wrapped: set[str] | None = None
        for node in walk_tree(init):
            if not (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name)
                and node.value.func.id in helpers
                and len(node.targets) == 1
            ):
                continue
            target = node.targets[0]
            slots = target.elts if isinstance(target, ast.Tuple) else [target]
            for position, slot in enumerate(slots):
                name = self_attribute(slot)
                if name is None:
                    continue
                if wrapped is None:
                    wrapped = _wrapped_later(ctx, init)
                if name in wrapped:
                    continue
                where = position if isinstance(target, ast.Tuple) else None
                plain = _returned_plain_list(ctx, helpers[node.value.func.id], where)
                if plain is not None:
                    ctx.report(
                        self,
                        plain,
                        f"`{node.value.func.id}` builds the layers of `self.{name}` in a "
                        "plain list: they are not registered (not trained, not moved by "
                        ".to(), not saved); build an nn.ModuleList",
                        data={"container": "list"},
                    )

    def _check_init(
        self,
        ctx: ModuleContext,
        init: ast.FunctionDef,
        builders: list[ast.FunctionDef],
        wrapped: list[set[str]],
    ) -> None:
        """`init`: the `__init__`, or a method it calls to build the layers (`builders`: all
        of them; `wrapped` caches the attributes one re-wraps in a registered container)."""
        for node in walk_tree(init):
            if isinstance(node, ast.Call):
                self._check_module_dict(ctx, node)
            if not isinstance(node, ast.Assign | ast.AnnAssign) or node.value is None:
                continue
            kind = _container_kind(node.value)
            if kind is None:
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = {self_attribute(t) for t in targets} - {None}
            if names and not wrapped:
                wrapped.append(set().union(*(_wrapped_later(ctx, fn) for fn in builders)))
            if not names or names & wrapped[0]:
                continue  # `self.rnns = [...]` then `self.rnns = nn.ModuleList(self.rnns)`
            elements = _elements(node.value)
            appended = [] if elements else _appended(init, names)
            if any(
                _is_module_ctor(ctx, e) and not stateless_module(ctx, e, mode_free=True)
                for e in elements
            ) or any(
                _is_module_ctor(ctx, e, containers=True)
                and not stateless_module(ctx, e, mode_free=True)
                for e in appended
            ):
                self._report(ctx, node, kind)

    def _check_module_dict(self, ctx: ModuleContext, call: ast.Call) -> None:
        """`nn.ModuleDict(dict(h=[Block() ...]))`: a plain list as one of its values."""
        if not (ctx.flow.qualname_of(call) or "").endswith("nn.ModuleDict") or not call.args:
            return
        mapping = call.args[0]
        values: list[ast.expr] = []
        if isinstance(mapping, ast.Dict):
            values = [v for v in mapping.values if v is not None]
        elif isinstance(mapping, ast.Call) and ast.unparse(mapping.func) == "dict":
            values = [k.value for k in mapping.keywords if k.arg is not None]
        for value in values:
            kind = _container_kind(value)
            if kind is not None and any(_is_module_ctor(ctx, e) for e in _elements(value)):
                self._report(ctx, value, kind)

    def _report(self, ctx: ModuleContext, node: ast.AST, kind: str) -> None:
        ctx.report(
            self,
            node,
            f"these modules/parameters sit in a plain {kind}: they are not registered "
            f"(not trained, not moved by .to(), not saved); use {_CONTAINERS[kind]}",
            data={"container": kind},
        )


def _setup_methods(cls: ast.ClassDef, init: ast.FunctionDef) -> list[ast.FunctionDef]:
    """Methods of the class that `__init__` calls as `self.setup_layers()` (ClusterGCN's
    `StackedGCN`, which builds its layers there): the layers they bind are the module's."""
    called = {
        node.func.attr
        for node in walk_tree(init)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and self_attribute(node.func) is not None
    }
    return [
        stmt
        for stmt in cls.body
        if isinstance(stmt, ast.FunctionDef) and stmt.name in called and stmt.name != "__init__"
    ]


def _wrapped_later(ctx: ModuleContext, init: ast.FunctionDef) -> set[str]:
    """Attributes that `__init__` re-assigns a registered container or module built from
    themselves (`self.rnns = nn.ModuleList(self.rnns)`), whose modules another attribute
    registers (`self.layer = nn.Sequential(*self.layer_list)`, `nn.ModuleList(self.units)`),
    or whose elements it registers one by one: the plain list then only holds references to
    registered modules."""
    wrapped = _registered_one_by_one(ctx, init)
    for node in walk_tree(init):
        if not isinstance(node, ast.Assign) or not isinstance(node.value, ast.Call):
            continue
        for target in node.targets:
            name = self_attribute(target)
            if name is None:
                continue
            mentioned = {
                self_attribute(a) for a in walk_tree(node.value) if isinstance(a, ast.Attribute)
            }
            if name in mentioned:
                wrapped.add(name)
            if _registering_container(node.value):
                for arg in node.value.args:
                    held = self_attribute(arg.value if isinstance(arg, ast.Starred) else arg)
                    if held is not None:
                        wrapped.add(held)
    return wrapped


_REGISTERING_METHODS = frozenset({"add_module", "register_module", "register_parameter"})


def _registered_one_by_one(ctx: ModuleContext, init: ast.FunctionDef) -> set[str]:
    """Attributes whose elements `init` hands to a registering call: `self.add_module(name,
    block)` in a loop over `self.blocks`, or a method of the class that calls
    `register_parameter` given `self.kernels` or a loop variable's `module.parameters()`
    (pytorch_RVAE's `self._add_to_parameters(...)`)."""
    cls = next((a for a in ctx.ancestors(init) if isinstance(a, ast.ClassDef)), None)
    registering = set(_REGISTERING_METHODS)
    if cls is not None:
        registering.update(
            fn.name
            for fn in cls.body
            if isinstance(fn, ast.FunctionDef)
            and any(
                isinstance(n, ast.Call)
                and isinstance(n.func, ast.Attribute)
                and n.func.attr in _REGISTERING_METHODS
                and self_attribute(n.func) is not None
                for n in walk_tree(fn)
            )
        )
    found: set[str] = set()
    for node in walk_tree(init):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in registering
            and self_attribute(node.func) is not None
        ):
            continue
        walked: dict[str, str] = {}  # a variable of a loop around the call -> its attribute
        for loop in ctx.ancestors(node):
            if loop is init:
                break
            if isinstance(loop, ast.For):
                attributes = {self_attribute(a) for a in walk_tree(loop.iter)} - {None}
                if len(attributes) == 1:
                    attribute = attributes.pop()
                    for target in walk_tree(loop.target):
                        if isinstance(target, ast.Name) and attribute is not None:
                            walked.setdefault(target.id, attribute)
        for arg in [*node.args, *(k.value for k in node.keywords)]:
            for part in walk_tree(arg):
                if isinstance(part, ast.Name) and part.id in walked:
                    found.add(walked[part.id])
                elif (name := self_attribute(part)) is not None:
                    found.add(name)
    return found


def _registering_container(call: ast.Call) -> bool:
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name in MODULE_CONTAINERS


def _appended(init: ast.FunctionDef, names: set[str | None]) -> list[ast.expr]:
    """What `__init__` appends to an attribute first bound to an empty list."""
    found: list[ast.expr] = []
    for node in walk_tree(init):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("append", "extend", "insert")
            and self_attribute(node.func.value) in names
            and node.args
        ):
            value = node.args[-1]
            found.extend(_elements(value) if node.func.attr == "extend" else [value])
    return found


def _returned_plain_list(
    ctx: ModuleContext, helper: ast.FunctionDef, position: int | None
) -> ast.Assign | None:
    """The `layers = []` of `helper` that it returns (at `position` of a returned tuple,
    when a position is given) after appending modules to it."""
    for ret in walk_scope(helper.body):
        if not isinstance(ret, ast.Return) or ret.value is None:
            continue
        value = ret.value
        if position is not None:
            if not isinstance(value, ast.Tuple) or len(value.elts) <= position:
                continue
            value = value.elts[position]
        if not isinstance(value, ast.Name):
            continue
        bindings = [
            n
            for n in walk_scope(helper.body)
            if isinstance(n, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == value.id for t in n.targets)
        ]
        if len(bindings) != 1 or not (
            isinstance(bindings[0].value, ast.List) and not bindings[0].value.elts
        ):
            continue
        appended = [
            n.args[0]
            for n in walk_scope(helper.body)
            if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute)
            and n.func.attr == "append"
            and isinstance(n.func.value, ast.Name)
            and n.func.value.id == value.id
            and len(n.args) == 1
        ]
        if any(
            _is_module_ctor(ctx, e, containers=True)
            or any(_is_module_ctor(ctx, c, containers=True) for c in ctx.flow.constructors(e))
            for e in appended
        ):
            return bindings[0]
    return None


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


def _is_module_ctor(ctx: ModuleContext, expr: ast.expr, containers: bool = False) -> bool:
    if not isinstance(expr, ast.Call):
        return False
    if isinstance(expr.func, ast.Name) and expr.func.id in ctx.flow.module_classes:
        return True
    qual = ctx.flow.qualname_of(expr) or ""
    last = qual.rsplit(".", 1)[-1]
    return (
        qual.startswith(LAYER_LIBRARY_PREFIXES)
        and last[:1].isupper()
        and (containers or last not in _CONTAINER_CLASSES)
    )


_CONTAINER_CLASSES = ("ModuleList", "ModuleDict", "ParameterList", "ParameterDict")
