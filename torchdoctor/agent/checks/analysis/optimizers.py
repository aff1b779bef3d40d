"""Which models an optimizer trains: the owners of the parameters it was built over.

`torch.optim.Adam(filter(lambda p: p.requires_grad, self.G.parameters()))` trains `self.G`
as surely as `Adam(self.G.parameters())`; rules that ask which model a step updates (a loss
that reaches it only through a cut, a loss of another model) read the `params` argument
through the wrappers that only order or filter it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from torchdoctor.agent.checks.base import ModuleContext

_ORDER_ONLY = frozenset({"list", "tuple", "iter", "filter"})


def model_key(expr: ast.expr) -> str | None:
    """What a model is known by: `D_LR` for `D_LR`, `model.module.enc` or `models[0]`;
    `self.netD` for `self.netD.encoder`."""
    root = model_root(expr)
    return ast.unparse(root) if root is not None else None


def model_root(expr: ast.expr) -> ast.Name | ast.Attribute | None:
    """The name (or `self.x`) a model expression starts from."""
    chain: list[ast.expr] = []
    node = expr
    while isinstance(node, ast.Attribute | ast.Subscript):
        chain.append(node)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    if node.id == "self":
        first = chain[-1] if chain else None
        return first if isinstance(first, ast.Attribute) else None
    return node


def parameter_owners(
    expr: ast.expr, key: Callable[[ast.expr], str | None] | None = None
) -> set[str] | None:
    """The models whose parameters an optimizer's `params` holds: `m.parameters()`,
    `itertools.chain(a.parameters(), b.parameters())`, `list(a.parameters()) + [...]`,
    `[{"params": a.parameters()}, ...]`; None for anything else. Each model is named by
    `key` (by default `model_key`: `self.netD` for `self.netD.encoder.parameters()`)."""
    name_of = key if key is not None else model_key
    if isinstance(expr, ast.Call):
        func = expr.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name == "parameters" and isinstance(func, ast.Attribute) and not expr.args:
            owner = name_of(func.value)
            return {owner} if owner is not None else None
        if name == "chain" or name in _ORDER_ONLY:
            parts = expr.args[-1:] if name == "filter" else expr.args
            return _union(parts, name_of)
        return None
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
        return _union([expr.left, expr.right], name_of)
    if isinstance(expr, ast.List | ast.Tuple):
        return _union(expr.elts, name_of)
    if isinstance(expr, ast.Dict):
        for field, value in zip(expr.keys, expr.values, strict=True):
            if isinstance(field, ast.Constant) and field.value == "params":
                return parameter_owners(value, name_of)
        return None
    return None


def _union(parts: list[ast.expr], key: Callable[[ast.expr], str | None]) -> set[str] | None:
    if not parts:
        return None
    found: set[str] = set()
    for part in parts:
        owners = parameter_owners(part, key)
        if owners is None:
            return None
        found |= owners
    return found


class OptimizerConstructions(NamedTuple):
    """The module's `torch.optim` constructions bound to a name."""

    sure: dict[str, tuple[set[str], list[ast.expr]]]
    """Optimizer (as written: `optimizer_D`, `self.opt_g`) -> (the models it was built over,
    the `params` expressions it was built from), for optimizers every construction of which
    names its models."""
    unsure: frozenset[str]
    """Optimizers built at least once over something else (`model_params`, a helper's list)."""


def optimizer_constructions(ctx: ModuleContext) -> OptimizerConstructions:
    """Which models each of the module's optimizers trains (once per module)."""
    memo = ctx.memo_table("optimizers.constructions")
    if "" not in memo:
        memo[""] = _constructions(ctx)
    return memo[""]  # type: ignore[no-any-return]


def _constructions(ctx: ModuleContext) -> OptimizerConstructions:
    found: dict[str, tuple[set[str], list[ast.expr]]] = {}
    unsure: set[str] = set()
    for node in ctx.flow.nodes(ast.Assign):
        value = node.value
        if not (isinstance(value, ast.Call) and len(node.targets) == 1):
            continue
        qual = ctx.flow.qualname_of(value) or ast.unparse(value.func)
        if not qual.startswith(("torch.optim.", "optim.")) or "lr_scheduler" in qual:
            continue
        target = ast.unparse(node.targets[0])
        params = value.args[0] if value.args else None
        for keyword in value.keywords:
            if keyword.arg == "params":
                params = keyword.value
        owners = parameter_owners(params) if params is not None else None
        if owners is None or params is None:
            unsure.add(target)
        else:
            keys, built = found.setdefault(target, (set(), []))
            keys.update(owners)
            built.append(params)
    sure = {name: entry for name, entry in found.items() if name not in unsure}
    return OptimizerConstructions(sure, frozenset(unsure))


_SYNC_HELPER = re.compile(r"(soft|hard|polyak|target)_?update|update_target|sync|copy_params")


def synced_copies(ctx: ModuleContext) -> dict[str, set[str]]:
    """Model -> the lagging copies the module syncs from it: `soft_update(self.qnetwork_local,
    self.qnetwork_target, tau)` (a helper named for the update, given both),
    `target.load_state_dict(model.state_dict())`, `target = copy.deepcopy(model)`, a loop
    writing one model's parameters from another's (`for p_t, p_o in zip(target.parameters(),
    online.parameters()): p_t.data = tau * p_t.data + ...`, either way round). A copy's
    parameters are its own: no gradient of a loss through it reaches the model."""
    found: dict[str, set[str]] = {}
    for loop in ctx.flow.nodes(ast.For):
        assert isinstance(loop, ast.For)
        pair = _zipped_parameters(loop)
        if pair is not None:
            _pair(found, pair[0], pair[1])
            _pair(found, pair[1], pair[0])
    for call in ctx.flow.nodes(ast.Call):
        func = call.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name == "load_state_dict" and isinstance(func, ast.Attribute) and call.args:
            source = call.args[0]
            if (
                isinstance(source, ast.Call)
                and isinstance(source.func, ast.Attribute)
                and source.func.attr == "state_dict"
            ):
                _pair(found, source.func.value, func.value)
        elif name == "deepcopy" and call.args:
            bound = ctx.parents.get(call)
            if isinstance(bound, ast.Assign) and len(bound.targets) == 1:
                _pair(found, call.args[0], bound.targets[0])
        elif _SYNC_HELPER.search(name.lower()) and len(call.args) >= 2:
            first, second = call.args[0], call.args[1]
            keys = [model_key(first), model_key(second)]
            if None not in keys and keys[0] != keys[1]:
                # either order: `soft_update(local, target, tau)`, `hard_update(target, source)`
                _pair(found, first, second)
                _pair(found, second, first)
    return found


def _pair(found: dict[str, set[str]], model: ast.expr, copy: ast.expr) -> None:
    source, target = model_key(model), model_key(copy)
    if source is not None and target is not None and source != target:
        found.setdefault(source, set()).add(target)


_IN_PLACE_WRITES = frozenset({"copy_", "mul_", "add_", "lerp_", "sub_", "set_"})


def _zipped_parameters(loop: ast.For) -> tuple[ast.expr, ast.expr] | None:
    """The two models of `for a, b in zip(x.parameters(), y.parameters()):` when its body
    writes `a` or `b` (assigns it or its `.data`, or updates it in place)."""
    source, target = loop.iter, loop.target
    if not (
        isinstance(source, ast.Call)
        and isinstance(source.func, ast.Name)
        and source.func.id == "zip"
        and len(source.args) == 2
        and isinstance(target, ast.Tuple)
        and len(target.elts) == 2
        and all(isinstance(e, ast.Name) for e in target.elts)
    ):
        return None
    models = []
    for arg in source.args:
        if not (
            isinstance(arg, ast.Call)
            and isinstance(arg.func, ast.Attribute)
            and arg.func.attr in ("parameters", "buffers")
        ):
            return None
        models.append(arg.func.value)
    names = {e.id for e in target.elts if isinstance(e, ast.Name)}
    for node in ast.walk(loop):
        written: ast.expr | None = None
        if isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            written = next(iter(targets), None)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _IN_PLACE_WRITES
        ):
            written = node.func.value
        while isinstance(written, ast.Attribute) and written.attr == "data":
            written = written.value
        if isinstance(written, ast.Name) and written.id in names:
            return models[0], models[1]
    return None
