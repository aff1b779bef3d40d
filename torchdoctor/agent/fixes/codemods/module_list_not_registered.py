"""module-list-not-registered: a plain list/dict of sub-modules -> `nn.ModuleList`/`ModuleDict`."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext
from torchdoctor.agent.fixes.models import FixKind, FixTarget

_SEQUENCES = (cst.List, cst.Tuple, cst.ListComp, cst.GeneratorExp)
_MAPPINGS = (cst.Dict, cst.DictComp)


class ModuleListNotRegisteredFix(Codemod):
    """Wraps the container the rule found in the registering one: `nn.ModuleList` (or
    `nn.ParameterList` when every element is an `nn.Parameter`), `nn.ModuleDict` (or
    `nn.ParameterDict`) for a dict with string keys. The layers then train, move with the
    model and are saved; a checkpoint saved before has none of their keys. Declined: modules
    and parameters mixed, and a dict whose keys may not be strings."""

    rule = "module-list-not-registered"
    kind = FixKind.CORRECTNESS
    summary = "hold the sub-modules in nn.ModuleList / nn.ModuleDict so they are registered"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        containers: list[cst.CSTNode] = [
            node
            for kind in (*_SEQUENCES, *_MAPPINGS)
            for node in ctx.find(kind, within=(target.line, target.line))
            if ctx.line(node) == target.line
        ]
        outer = [
            c
            for c in containers
            if not any(a in containers for a in ctx.ancestors(c)) and not _registered(ctx, c)
        ]
        if not outer:
            return False
        if len(outer) != 1:
            return ctx.decline("several containers start on this line: which one is unclear")
        container = outer[0]
        assert isinstance(container, cst.BaseExpression)
        elements = _elements(container)
        parameters = [_is_parameter(ctx, e) for e in elements]
        if any(parameters) and not all(parameters):
            return ctx.decline("modules and parameters share the container: split it by hand")
        if isinstance(container, cst.DictComp) or (
            isinstance(container, cst.Dict) and not _string_keys(container)
        ):
            return ctx.decline("nn.ModuleDict needs string keys, which this dict may not have")
        holder = ("Parameter" if parameters and all(parameters) else "Module") + (
            "Dict" if isinstance(container, _MAPPINGS) else "List"
        )
        nn = ctx.require_module("torch.nn")
        wrapped = cst.Call(
            func=cst.parse_expression(f"{nn}.{holder}"), args=[cst.Arg(value=container)]
        )
        ctx.substitute(container, wrapped)
        return True


def _registered(ctx: SourceContext, container: cst.CSTNode) -> bool:
    """Already what a registering container is built from (`nn.ModuleList([...])`)."""
    arg = ctx.parent(container)
    call = ctx.parent(arg) if isinstance(arg, cst.Arg) else None
    return isinstance(call, cst.Call) and (ctx.qualname(call.func) or "").rsplit(".", 1)[-1] in (
        "ModuleList",
        "ModuleDict",
        "ParameterList",
        "ParameterDict",
        "Sequential",
    )


def _elements(container: cst.BaseExpression) -> list[cst.BaseExpression]:
    if isinstance(container, cst.List | cst.Tuple):
        return [e.value for e in container.elements]
    if isinstance(container, cst.ListComp | cst.GeneratorExp):
        return [container.elt]
    if isinstance(container, cst.Dict):
        return [e.value for e in container.elements if isinstance(e, cst.DictElement)]
    if isinstance(container, cst.DictComp):
        return [container.value]
    return []


def _is_parameter(ctx: SourceContext, element: cst.BaseExpression) -> bool:
    return isinstance(element, cst.Call) and (ctx.qualname(element.func) or "").endswith(
        "nn.Parameter"
    )


def _string_keys(mapping: cst.Dict) -> bool:
    return all(
        isinstance(e, cst.DictElement)
        and isinstance(e.key, cst.SimpleString | cst.ConcatenatedString | cst.FormattedString)
        for e in mapping.elements
    )
