"""in-place-result-assigned: the result of a call that works in place replaces the object."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import terminal_name
from torchdoctor.agent.models import Severity

_LOADERS = {
    "load_state_dict": "the keys it could not match (a named tuple; None for an optimizer)",
    "set_peft_model_state_dict": "its load report (the keys it could not match)",
    "load_model": "the keys it could not match",
}
"""Calls that fill an existing object from a checkpoint and return a report, not the object
(`load_model` only as `safetensors.torch.load_model(model, path)`: projects' own
`load_model(path)` functions return the model)."""
_RETURNS_NONE = frozenset({"shuffle"})
"""`random.shuffle(x)`, `np.random.shuffle(x)`: shuffle in place and return None."""
_RETURNS_NONE_OWNERS = frozenset({"random", "numpy.random", "np.random"})
_LIST_METHODS = frozenset({"append", "extend", "insert", "sort", "reverse", "clear", "remove"})
"""A list's in-place methods, all returning None (only on a name bound to a list display)."""
_USED_AS_OBJECT = frozenset(
    {
        "eval", "train", "to", "cuda", "cpu", "half", "float", "parameters",
        "named_parameters", "state_dict", "forward", "modules", "children", "apply",
        "zero_grad", "step", "param_groups", "generate", "save_pretrained",
        "print_trainable_parameters",
    }
)  # fmt: skip
"""Attributes that only the loaded object has: reading one of the call's result means the
code took the result for the object."""


class InPlaceResultAssigned(Rule):
    """Detects the result of a call that works in place bound to the name of the object it
    worked on: `model = model.load_state_dict(sd)`, `model = set_peft_model_state_dict(model,
    weights)`, `net = Net().load_state_dict(sd)`, `x = random.shuffle(x)`, `losses =
    losses.append(loss)` on a list.

    Why it matters: `load_state_dict` loads in place and returns the keys it could not match
    (an optimizer's returns None); `random.shuffle` and a list's `append` return None. The name
    that held the model now holds a named tuple, so the next `model.eval()` fails, or worse,
    the object is handed on and only fails much later. tloen/alpaca-lora fixed exactly this
    in its resume path (`2d719c1`: `model = set_peft_model_state_dict(model, adapters_weights)`).

    Reported when the result is bound to the receiver's (or the loader's first argument's)
    own name, when the receiver is built in the same expression (`Net().load_state_dict(...)`,
    whose model is then lost), or when the bound name is later used as the object (`.eval()`,
    `.to(...)`, `.parameters()`, called). Not reported: the report kept under its own name and
    read as one (`missing = model.load_state_dict(sd, strict=False)`, `print(missing)`,
    `missing.missing_keys`), also in an override that delegates to its base (`result =
    super().load_state_dict(state_dict, strict)`, then returned: `super()` builds nothing, the
    module loaded is `self`); list methods on a name not bound to a list in the same scope
    (`df = df.append(row)` is pandas, which returns a new frame).

    Example:
        model = model.load_state_dict(torch.load(path))
        model.eval()

    Fix: call it for its effect, `model.load_state_dict(torch.load(path))`, and keep the
    report under another name if you need it.
    """

    id = "in-place-result-assigned"
    point = 1
    severity = Severity.HIGH
    title = "In-place call's result replaces the object"
    items: ClassVar[tuple[str, ...]] = ("1.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Assign,)
    triggers = Triggers(
        ("load_state_dict", "set_peft_model_state_dict", "load_model", "shuffle",
         *sorted(_LIST_METHODS))
    )  # fmt: skip

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Assign)
        call = node.value
        if len(node.targets) != 1 or not isinstance(call, ast.Call):
            return
        target = node.targets[0]
        if not isinstance(target, ast.Name | ast.Attribute):
            return
        name = terminal_name(call.func)
        worked_on = "receiver" if isinstance(call.func, ast.Attribute) else "argument"
        if name in _LOADERS:
            what = self._loaded(call, name, ctx)
            if what is not None and self._takes_result_for(target, what, node, ctx):
                worked_on = "receiver" if name == "load_state_dict" else "argument"
                self._report(ctx, node, name, _LOADERS[name], worked_on)
        elif name in _RETURNS_NONE and _shuffle(call, ctx):
            self._report(ctx, node, name, "None", "argument")
        elif name in _LIST_METHODS and worked_on == "receiver":
            receiver = call.func.value  # type: ignore[attr-defined]
            if _same(receiver, target) and _bound_to_list(receiver, node, ctx):
                self._report(ctx, node, name, "None", worked_on)

    def _report(
        self, ctx: ModuleContext, node: ast.Assign, name: str, returns: str, worked_on: str
    ) -> None:
        """`worked_on`: where the call's object is, `receiver` (`model.load_state_dict`) or
        first `argument` (`random.shuffle(x)`), for the codemod."""
        ctx.report(self, node, _message(node.targets[0], name, returns), data={"object": worked_on})

    @staticmethod
    def _loaded(call: ast.Call, name: str, ctx: ModuleContext) -> ast.expr | None:
        """The object the loader fills: the method's receiver, or the function's first
        argument (`set_peft_model_state_dict(model, sd)`); None when it is not a loader."""
        if name == "load_state_dict":
            return call.func.value if isinstance(call.func, ast.Attribute) else None
        if name == "load_model" and ctx.qualname(call.func) != "safetensors.torch.load_model":
            return None
        return call.args[0] if call.args else None

    @staticmethod
    def _takes_result_for(
        target: ast.expr, loaded: ast.expr, node: ast.Assign, ctx: ModuleContext
    ) -> bool:
        if _same(loaded, target):
            return True
        if isinstance(loaded, ast.Call) and not _is_super(loaded):
            return True  # `Net().load_state_dict(sd)`: the model is lost
        if not isinstance(target, ast.Name):
            return False
        return _used_as_object(target.id, node, ctx)


def _is_super(call: ast.Call) -> bool:
    """`super()`: the object itself, its override delegating to the base class."""
    return isinstance(call.func, ast.Name) and call.func.id == "super"


def _same(a: ast.expr, b: ast.expr) -> bool:
    if isinstance(a, ast.Name) and isinstance(b, ast.Name):
        return a.id == b.id
    if isinstance(a, ast.Attribute) and isinstance(b, ast.Attribute):
        return a.attr == b.attr and _same(a.value, b.value)
    return False


def _shuffle(call: ast.Call, ctx: ModuleContext) -> bool:
    """`random.shuffle(x)` / `np.random.shuffle(x)` (by import or by the usual aliases)."""
    func = call.func
    if not isinstance(func, ast.Attribute):
        return ctx.qualname(func) == "random.shuffle"
    qualified = ctx.qualname(func)
    if qualified is not None:
        return qualified in {"random.shuffle", "numpy.random.shuffle"}
    return ast.unparse(func.value) in _RETURNS_NONE_OWNERS


def _scope_body(node: ast.AST, ctx: ModuleContext) -> list[ast.stmt]:
    function = ctx.enclosing_function(node)
    return function.body if function is not None else ctx.tree.body


def _bound_to_list(name: ast.expr, node: ast.Assign, ctx: ModuleContext) -> bool:
    """Whether `name` is a plain name bound to a list display, `list(...)` or a list
    comprehension somewhere in the assignment's scope (and to nothing else there)."""
    if not isinstance(name, ast.Name):
        return False
    kinds: list[bool] = []
    for stmt in _scope_body(node, ctx):
        for inner in ast.walk(stmt):
            if (
                isinstance(inner, ast.Assign)
                and inner is not node
                and any(isinstance(t, ast.Name) and t.id == name.id for t in inner.targets)
            ):
                value = inner.value
                kinds.append(
                    isinstance(value, ast.List | ast.ListComp)
                    or (
                        isinstance(value, ast.Call)
                        and isinstance(value.func, ast.Name)
                        and value.func.id == "list"
                    )
                )
    return bool(kinds) and all(kinds)


def _used_as_object(name: str, node: ast.Assign, ctx: ModuleContext) -> bool:
    """Whether a statement after `node` in its scope calls `name` or reads one of the
    loaded object's own attributes from it, before `name` is bound again."""
    after = False
    for stmt in _scope_body(node, ctx):
        if not after:
            after = any(inner is node for inner in ast.walk(stmt))
            if not after or stmt is node:
                continue
        for inner in ast.walk(stmt):
            if isinstance(inner, ast.Name) and inner.id == name:
                if isinstance(inner.ctx, ast.Store):
                    return False
                continue
            if (
                isinstance(inner, ast.Call)
                and isinstance(inner.func, ast.Name)
                and inner.func.id == name
            ):
                return True
            if (
                isinstance(inner, ast.Attribute)
                and inner.attr in _USED_AS_OBJECT
                and isinstance(inner.value, ast.Name)
                and inner.value.id == name
            ):
                return True
    return False


def _message(target: ast.expr, name: str, returns: str) -> str:
    bound = ast.unparse(target)
    return (
        f"`{name}` works in place and returns {returns}, not the object: `{bound}` now holds "
        f"that, and the object it held is lost. Call it for its effect and keep `{bound}`."
    )
