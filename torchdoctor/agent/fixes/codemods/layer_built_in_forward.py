"""layer-built-in-forward: a layer built at every forward -> built once in `__init__`."""

from __future__ import annotations

import re

import libcst as cst

from torchdoctor.agent.checks.analysis.vocabulary import DROPOUT_LAYERS, PARAMETER_LAYERS
from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext, line_statement
from torchdoctor.agent.fixes.codemods.common import ancestors_below
from torchdoctor.agent.fixes.models import FixKind, FixTarget

_LAYERS = PARAMETER_LAYERS | DROPOUT_LAYERS
_LOOPS = (cst.For, cst.While, cst.ListComp, cst.SetComp, cst.DictComp, cst.GeneratorExp)


class LayerBuiltInForwardFix(Codemod):
    """Builds the layer once, at the end of the class's `__init__`, under a new attribute
    named for it (`self.layer_norm = nn.LayerNorm(d_model)`), and calls that attribute where
    it was built; `self.fc = nn.Linear(...)` in `forward` moves to `__init__` as it is. The
    layer's weights then train, move with the model and are saved (a checkpoint saved before
    lacks them). Declined, with the reason: arguments that read the call's inputs or locals
    (`x.size(-1)`: the size is known only at the call), a layer built in a loop (one per
    iteration: an `nn.ModuleList`), a class without its own `__init__`, and a parameter
    rebuilt from its own value (`self.w = nn.Parameter(f(self.w))`)."""

    rule = "layer-built-in-forward"
    kind = FixKind.CORRECTNESS
    summary = "build the layer once in __init__ and call it in forward"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        calls = [
            c
            for c in ctx.find(cst.Call, within=(target.line, target.line))
            if ctx.line(c) == target.line and _layer(ctx, c)
        ]
        if len(calls) != 1:
            return ctx.decline("no single layer construction on this line") if calls else False
        call = calls[0]
        method = next((a for a in ctx.ancestors(call) if isinstance(a, cst.FunctionDef)), None)
        cls = next((a for a in ctx.ancestors(call) if isinstance(a, cst.ClassDef)), None)
        if method is None or cls is None:
            return False
        if any(isinstance(a, _LOOPS) for a in ancestors_below(ctx, call, method)):
            return ctx.decline(
                "the layer is built in a loop, one per iteration: hold them in an nn.ModuleList "
                "built in __init__"
            )
        init = next(
            (
                s
                for s in cls.body.body
                if isinstance(s, cst.FunctionDef) and s.name.value == "__init__"
            ),
            None,
        )
        if init is None or not isinstance(init.body, cst.IndentedBlock) or not init.body.body:
            return ctx.decline("the class has no __init__ of its own to build the layer in")
        local = _local_names(ctx, method)
        read = _read_names(call)
        if read & local:
            names = ", ".join(sorted(read & local))
            return ctx.decline(
                f"its arguments read {names}, known only inside {method.name.value}(): build "
                "it lazily under `if self.<name> is None`, or pass the size to __init__"
            )
        stored = _stored_statement(ctx, call)
        if stored is not None and _reads_its_target(ctx, stored, call):
            return ctx.decline(
                "it re-wraps the attribute's own value at every call (`self.w = "
                "nn.Parameter(f(self.w))`): decide whether `f` belongs in forward, computed "
                "into a local from the parameter, or once in __init__"
            )
        if stored is not None:
            ctx.remove(stored)
            ctx.insert_after(init.body.body[-1], [stored.with_changes(leading_lines=[])])
            return True
        name = _free_attribute(ctx, cls, _layer(ctx, call))
        ctx.insert_after(init.body.body[-1], f"self.{name} = {ctx.code(call)}\n")
        ctx.substitute(call, cst.parse_expression(f"self.{name}"))
        return True


def _layer(ctx: SourceContext, call: cst.Call) -> str:
    qualname = ctx.qualname(call.func) or ""
    last = qualname.rsplit(".", 1)[-1]
    return last if qualname.startswith("torch.nn.") and last in _LAYERS else ""


def _local_names(ctx: SourceContext, method: cst.FunctionDef) -> set[str]:
    """The method's parameters (`self` aside) and every name it binds."""
    names = {p.name.value for p in method.params.params if p.name.value != "self"}
    for extra in (*method.params.posonly_params, *method.params.kwonly_params):
        names.add(extra.name.value)
    for star in (method.params.star_arg, method.params.star_kwarg):
        if isinstance(star, cst.Param):
            names.add(star.name.value)
    for target in ctx.find(cst.AssignTarget, inside=method):
        names |= _read_names(target.target)
    for node in ctx.find(cst.AugAssign, inside=method) + ctx.find(cst.AnnAssign, inside=method):
        names |= _read_names(node.target)
    for loop in ctx.find(cst.For, inside=method) + ctx.find(cst.CompFor, inside=method):
        names |= _read_names(loop.target)
    for item in ctx.find(cst.AsName, inside=method):
        names |= _read_names(item.name)
    for inner in ctx.find(cst.FunctionDef, inside=method):
        names.add(inner.name.value)
        names |= {p.name.value for p in inner.params.params}
    return names


def _read_names(node: cst.CSTNode) -> set[str]:
    """Bare names in `node`, not attribute names (`self.hidden` reads `self` only)."""
    found: set[str] = set()

    class Names(cst.CSTVisitor):
        def visit_Name(self, name: cst.Name) -> None:
            found.add(name.value)

        def visit_Attribute(self, attribute: cst.Attribute) -> bool:
            attribute.value.visit(self)
            return False

    node.visit(Names())
    return found - {"self"}


def _reads_its_target(ctx: SourceContext, stored: cst.SimpleStatementLine, call: cst.Call) -> bool:
    """`self.dy_paras = nn.Parameter(self.softmax(self.dy_paras))`: moved to `__init__`, the
    transform would run once instead of at every call."""
    assign = stored.body[0]
    if not isinstance(assign, cst.Assign):
        return False
    target = ctx.code(assign.targets[0].target)
    return re.search(rf"(?<![\w.]){re.escape(target)}(?!\w)", ctx.code(call)) is not None


def _stored_statement(ctx: SourceContext, call: cst.Call) -> cst.SimpleStatementLine | None:
    """`self.fc = nn.Linear(...)` (the whole statement), else None."""
    stmt = line_statement(ctx, ctx.line(call))
    if stmt is None:
        return None
    assign = stmt.body[0]
    if not isinstance(assign, cst.Assign) or len(assign.targets) != 1:
        return None
    target = assign.targets[0].target
    on_self = (
        isinstance(target, cst.Attribute)
        and isinstance(target.value, cst.Name)
        and target.value.value == "self"
    )
    value: cst.BaseExpression = assign.value
    while (
        isinstance(value, cst.Call) and value is not call and isinstance(value.func, cst.Attribute)
    ):
        value = value.func.value  # `nn.Linear(...).to(device)`
    return stmt if on_self and value is call else None


def _free_attribute(ctx: SourceContext, cls: cst.ClassDef, layer: str) -> str:
    """`LayerNorm` -> 'layer_norm', or 'layer_norm_2'... when the class uses that name."""
    base = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", layer).lower()
    used = {a.attr.value for a in ctx.find(cst.Attribute, inside=cls)}
    used |= {s.name.value for s in cls.body.body if isinstance(s, cst.FunctionDef)}
    name, number = base, 1
    while name in used:
        number += 1
        name = f"{base}_{number}"
    return name
