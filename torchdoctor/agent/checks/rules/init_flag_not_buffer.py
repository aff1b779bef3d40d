"""init-flag-not-buffer: a data-dependent initialisation flag kept outside the state dict."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import registered_buffer_names, self_attribute
from torchdoctor.agent.models import Severity

_PARAMETERS = frozenset({"torch.nn.Parameter", "torch.nn.parameter.Parameter"})
# Methods that put the flag into (or restore it from) a checkpoint themselves.
_STATE_HOOKS = frozenset(
    {
        "state_dict",
        "load_state_dict",
        "_load_from_state_dict",
        "_save_to_state_dict",
        "get_extra_state",
        "set_extra_state",
        "__getstate__",
        "__setstate__",
    }
)


class InitFlagNotBuffer(Rule):
    """Detects an `nn.Module` that initialises its parameters from the first batch it sees
    (ActNorm's data-dependent init: `if not self.initialized: self.initialize(input);
    self.initialized = True`) and keeps that flag as a plain Python attribute
    (`self.initialized = False` in `__init__`).

    Why it matters: a plain attribute is not in the state dict. A model restored from a
    checkpoint starts with the flag False, so its first forward re-initialises the trained
    parameters from that batch's statistics and overwrites what was loaded: sampling or
    evaluation after a reload silently uses different weights. rosinality/glow-pytorch fixed
    exactly this (`f332121`: `self.register_buffer('initialized', torch.tensor(0,
    dtype=torch.uint8))`, then `self.initialized.fill_(1)`).

    Not reported: flags registered as buffers, flags whose guarded branch touches no
    parameter of the module (a lazily built cache, a logger), classes that save or restore
    state themselves (`state_dict`, `_load_from_state_dict`, `get_extra_state` overridden),
    classes that are not modules.

    Example:
        class ActNorm(nn.Module):
            def __init__(self, channels):
                super().__init__()
                self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
                self.initialized = False

            def forward(self, x):
                if not self.initialized:
                    with torch.no_grad():
                        self.loc.data.copy_(-x.mean(dim=(0, 2, 3), keepdim=True))
                    self.initialized = True
                return x + self.loc

    Fix: `self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))`, test
    `self.initialized.item() == 0` and set it with `self.initialized.fill_(1)`.
    """

    id = "init-flag-not-buffer"
    point = 4
    severity = Severity.MEDIUM
    title = "Data-dependent initialisation flag kept outside the state dict"
    items: ClassVar[tuple[str, ...]] = ("4.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.ClassDef,)
    triggers = Triggers(all_of=(("Parameter",), ("False", "= 0")))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.ClassDef)
        if node.name not in ctx.flow.module_classes:
            return
        methods = {
            item.name: item
            for item in node.body
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        init = methods.get("__init__")
        if init is None or _STATE_HOOKS & methods.keys():
            return
        parameters = _parameter_attributes(ctx, node)
        if not parameters:
            return
        buffers = registered_buffer_names(node)
        for statement in walk_tree(init):
            flag = _false_flag(statement)
            if flag is None or flag in buffers or flag in parameters:
                continue
            guard = _initialising_branch(node, methods, flag, parameters)
            if guard is None:
                continue
            ctx.report(
                self,
                statement,
                f"`self.{flag}` records that the parameters were initialised from data "
                f"(line {guard.lineno}), but as a plain attribute it is not in the state "
                "dict: after loading a checkpoint the first forward re-initialises the "
                "trained parameters. Register it as a buffer.",
            )


def _false_flag(statement: ast.AST) -> str | None:
    """`self.initialized = False` (or `= 0`): the flag's name."""
    if not (isinstance(statement, ast.Assign) and len(statement.targets) == 1):
        return None
    value = statement.value
    if not (isinstance(value, ast.Constant) and value.value in (False, 0)):
        return None
    if isinstance(value.value, float):
        return None
    return self_attribute(statement.targets[0])


def _parameter_attributes(ctx: ModuleContext, cls: ast.ClassDef) -> set[str]:
    """`self.loc = nn.Parameter(...)`: the class's own parameters."""
    found: set[str] = set()
    for node in walk_tree(cls):
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.value, ast.Call)
            and ctx.flow.qualname_of(node.value) in _PARAMETERS
        ):
            name = self_attribute(node.targets[0])
            if name is not None:
                found.add(name)
    return found


def _initialising_branch(
    cls: ast.ClassDef,
    methods: dict[str, ast.FunctionDef | ast.AsyncFunctionDef],
    flag: str,
    parameters: set[str],
) -> ast.If | None:
    """An `if not self.<flag>:` (or `== False`/`== 0`) in a method other than `__init__`
    whose body sets the flag and writes a parameter, itself or through a method of the
    class it calls (`self.initialize(input)`)."""
    for name, method in methods.items():
        if name == "__init__":
            continue
        for node in walk_tree(method):
            if not isinstance(node, ast.If) or not _tests_unset(node.test, flag):
                continue
            body = [inner for statement in node.body for inner in walk_tree(statement)]
            sets = any(
                isinstance(inner, ast.Assign)
                and any(self_attribute(t) == flag for t in inner.targets)
                for inner in body
            )
            if sets and _writes_parameters(body, methods, parameters):
                return node
    return None


def _tests_unset(test: ast.expr, flag: str) -> bool:
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return self_attribute(test.operand) == flag
    if (
        isinstance(test, ast.Compare)
        and len(test.ops) == 1
        and isinstance(test.ops[0], ast.Eq | ast.Is)
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value in (False, 0)
    ):
        return self_attribute(test.left) == flag
    return False


def _writes_parameters(
    body: list[ast.AST],
    methods: dict[str, ast.FunctionDef | ast.AsyncFunctionDef],
    parameters: set[str],
) -> bool:
    """An in-place write of a parameter (`self.loc.data.copy_(...)`, `self.scale.fill_`),
    an assignment to its `.data`, directly or in a method of the class the body calls."""
    for inner in body:
        if _writes_a_parameter(inner, parameters):
            return True
        if (
            isinstance(inner, ast.Call)
            and isinstance(inner.func, ast.Attribute)
            and isinstance(inner.func.value, ast.Name)
            and inner.func.value.id == "self"
            and inner.func.attr in methods
            and any(_writes_a_parameter(n, parameters) for n in walk_tree(methods[inner.func.attr]))
        ):
            return True
    return False


def _writes_a_parameter(node: ast.AST, parameters: set[str]) -> bool:
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr.endswith("_")
    ):
        return _parameter_of(node.func.value, parameters)
    if isinstance(node, ast.Assign):
        return any(
            isinstance(t, ast.Attribute) and t.attr == "data" and _parameter_of(t.value, parameters)
            for t in node.targets
        )
    return False


def _parameter_of(expr: ast.expr, parameters: set[str]) -> bool:
    """`self.loc`, `self.loc.data`, `self.loc[i]`."""
    while isinstance(expr, ast.Subscript) or (
        isinstance(expr, ast.Attribute) and expr.attr == "data"
    ):
        expr = expr.value
    name = self_attribute(expr) if isinstance(expr, ast.Attribute) else None
    return name is not None and name in parameters
