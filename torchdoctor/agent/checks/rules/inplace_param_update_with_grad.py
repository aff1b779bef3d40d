"""inplace-param-update-with-grad: parameters updated in place while autograd records."""

from __future__ import annotations

import ast
from typing import Any, ClassVar

from torchdoctor.agent.checks.analysis.gradmode import grad_may_be_off, grad_mode_at
from torchdoctor.agent.checks.analysis.project import (
    Pending,
    ProjectIndex,
    defer,
    module_name,
    passes_parameters,
    publish_parameter_calls,
)
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.checks.dataflow import kwarg
from torchdoctor.agent.checks.loops import walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_INPLACE = frozenset(
    {
        "add_", "sub_", "mul_", "div_", "addcmul_", "addcdiv_", "copy_", "clamp_", "clamp_min_",
        "clamp_max_", "fill_", "zero_", "normal_", "uniform_", "lerp_", "neg_", "pow_",
    }
)  # fmt: skip
_PARAMETER_ITERATORS = frozenset({"parameters", "named_parameters"})
_VIEWS = frozenset({"view", "reshape", "view_as", "unflatten"})


class InplaceParamUpdateWithGrad(Rule):
    """Detects an in-place update of a parameter (`p -= lr * p.grad`, `p.add_(...)`,
    `p.uniform_(...)`) where `p` iterates `model.parameters()` / `named_parameters()` or is a
    tensor created with `requires_grad=True`, or an indexed in-place update of a reshaped
    view of a layer's weight or bias (`b = conv.bias.view(3, -1); b[:, 4] += prior`, a
    detection head's bias initialisation), while autograd is on: not under `no_grad()` /
    `inference_mode()`, not in a function decorated with them, not in a helper every call of
    which runs under them.

    Why it matters: an in-place change of a leaf tensor that requires grad raises
    "a leaf Variable that requires grad is being used in an in-place operation"; the manual
    SGD step or custom initialisation never runs. Rewriting it as `p = p - lr * p.grad` to
    silence the error builds a new non-leaf tensor: the model's parameter is not updated.

    Also reported: a frozen target network's parameter updated in place from the live one's
    (`p_targ.add_((1 - polyak) * p)` in `zip(ac.parameters(), ac_targ.parameters())`) with
    autograd on: PyTorch accepts it, and the frozen copy silently records a graph that grows
    by one link every update.

    Also reported: a helper's in-place update of one side of a zip of its arguments from the
    other, read attached (`for targ, src in zip(target_params, source_params):
    targ.mul_(rate).add_(src, alpha=1 - rate)`, an EMA helper of a utilities file), when a
    call of this file or another one hands it `.parameters()` with autograd on. The zip may
    pair the object's own copies with an argument (`zip(self.shadow_params, parameters)` in
    an EMA's `update`), reported at once when the helper keeps only what requires grad
    (`parameters = [p for p in parameters if p.requires_grad]`: score_sde's EMA).

    Not reported: updates through `p.data` or of `p.grad`, `torch.nn.init.*` (they disable
    grad themselves), code under `set_grad_enabled(flag)` (decided at run time),
    `requires_grad_()` and other flag setters.

    Example:
        for p in model.parameters():
            p -= lr * p.grad

    Fix: wrap the update in `with torch.no_grad():` (what `torch.optim` does), or use an
    optimizer.
    """

    id = "inplace-param-update-with-grad"
    point = 4
    severity = Severity.HIGH
    title = "Parameter updated in place with autograd on"
    items: ClassVar[tuple[str, ...]] = ("4.3",)
    triggers = Triggers(("parameters()", "requires_grad=True", ".bias.", ".weight.", "zip("))

    def applies(self, ctx: ModuleContext) -> bool:
        return (
            "parameters()" in ctx.source
            or "requires_grad=True" in ctx.source
            or ".bias." in ctx.source
            or ".weight." in ctx.source
        )

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        """A helper's in-place update from the other side of a zip of its arguments holds
        when another file's call hands it a model's parameters with autograd on."""
        return ProjectIndex.from_facts(facts).confirmed(facts, cls.id)

    def finish(self, ctx: ModuleContext) -> None:
        if "parameters()" in ctx.source:
            publish_parameter_calls(ctx)
        if not self.applies(ctx) and "zip(" not in ctx.source:
            return
        flow = ctx.flow
        sites: list[tuple[ast.stmt | ast.expr, ast.expr]] = [
            (a, a.target) for a in flow.nodes(ast.AugAssign)
        ]
        sites += [
            (call, call.func.value)
            for call in flow.nodes(ast.Call)
            if isinstance(call.func, ast.Attribute) and call.func.attr in _INPLACE
        ]
        for site, target in sites:
            if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
                view = _parameter_view(ctx, target.value)  # `b[:, 4] += x`, b a weight's view
                if view is not None and grad_mode_at(ctx, site) == "on":
                    ctx.report(
                        self,
                        site,
                        f"`{target.value.id}` is a view of `{ast.unparse(view)}`, a parameter, "
                        "updated in place with autograd on: PyTorch refuses in-place changes "
                        "of (views of) leaf tensors that require grad",
                        data={"wrap_line": site.lineno},
                    )
                continue
            if not isinstance(target, ast.Name):
                continue
            anchor = _parameter_origin(ctx, target)
            if anchor is None and grad_mode_at(ctx, site) == "on":
                self._update_from_zipped_arguments(ctx, site, target)
            if anchor is None:
                live = _fed_from_live_parameter(ctx, site, target)
                if live is not None and grad_mode_at(ctx, site) == "on":
                    ctx.report(
                        self,
                        site,
                        f"`{target.id}` is a frozen copy's parameter updated in place from "
                        f"`{live}`, a parameter that requires grad, with autograd on: the copy "
                        "starts recording a graph, one more link every update (memory grows, "
                        "and the copy is frozen no more)",
                        data={"wrap_line": site.lineno},
                    )
                continue
            if grad_mode_at(ctx, site) != "on":
                continue
            ctx.report(
                self,
                site,
                f"`{target.id}` is a parameter updated in place with autograd on: PyTorch "
                "refuses in-place changes of leaf tensors that require grad",
                data={"wrap_line": anchor.lineno},
            )

    def _update_from_zipped_arguments(
        self, ctx: ModuleContext, site: ast.stmt | ast.expr, target: ast.Name
    ) -> None:
        """`for targ, src in zip(target_params, source_params): targ.mul_(rate).add_(src)`
        in a helper whose arguments are the sequences (an EMA or soft-update helper of a
        utilities file): reported when a call of this file passes `.parameters()` for them
        with autograd on, else left to the project pass for the other files' calls."""
        source = _zipped_argument_source(ctx, site, target)
        if source is None:
            return
        message = (
            f"`{target.id}` is updated in place from `{source}`, the other side of a zip of "
            "this helper's arguments that callers fill with model parameters, with autograd "
            "on: a target that requires grad makes PyTorch refuse the change, a frozen one "
            "records a graph, one more link every update; wrap the loop in `torch.no_grad()`"
        )
        fn = ctx.enclosing_function(site)
        assert fn is not None
        if _holds_trainable_parameters(ctx, fn, _zip_side_of(ctx, site, source)):
            ctx.report(self, site, message, data={"wrap_line": site.lineno})
            return
        if any(
            not grad_may_be_off(ctx, call)
            and any(passes_parameters(a) for a in [*call.args, *(k.value for k in call.keywords)])
            for call in ctx.calls.call_sites(fn)
        ):
            ctx.report(self, site, message, data={"wrap_line": site.lineno})
            return
        if not isinstance(ctx.parents.get(fn), ast.Module):
            return
        found = ctx.finding(self, site, message, data={"wrap_line": site.lineno})
        if found is not None:
            symbol = f"{module_name(ctx.path)}.{fn.name}"
            defer(
                ctx,
                self.id,
                Pending(symbol=symbol, needs="given-parameters-by-a-caller", finding=found),
            )


def _zipped_argument_source(
    ctx: ModuleContext, site: ast.stmt | ast.expr, name: ast.Name
) -> str | None:
    """The other element the update of `name` reads attached, where `name` and it iterate
    `zip(a, b)` over two parameters of the enclosing function, never rebound there."""
    loop = next((a for a in ctx.ancestors(name) if isinstance(a, ast.For)), None)
    fn = ctx.enclosing_function(site)
    if loop is None or fn is None or ctx.enclosing_function(loop) is not fn:
        return None
    it, names = loop.iter, loop.target
    if not (isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "zip"):
        return None
    if not isinstance(names, ast.Tuple) or len(names.elts) != len(it.args) or len(it.args) < 2:
        return None
    params = {a.arg for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]}
    if not all(_zipped_argument(ctx, a, params) or _object_state(a, fn, params) for a in it.args):
        return None
    elements = [e.id for e in names.elts if isinstance(e, ast.Name)]
    if name.id not in elements:
        return None
    others = {e for e in elements if e != name.id}
    operands = [site.value] if isinstance(site, ast.AugAssign) else []
    if isinstance(site, ast.Call):
        operands = [*site.args, *(k.value for k in site.keywords)]
        outer = ctx.parents.get(site)  # `targ.mul_(rate).add_(src, ...)`: the chained update
        while isinstance(outer, ast.Attribute) and isinstance(ctx.parents.get(outer), ast.Call):
            chained = ctx.parents[outer]
            assert isinstance(chained, ast.Call)
            if outer.attr not in _INPLACE:
                break
            operands += [*chained.args, *(k.value for k in chained.keywords)]
            outer = ctx.parents.get(chained)
    for operand in operands:
        for node in ast.walk(operand):
            if isinstance(node, ast.Name) and node.id in others and not _detached_read(ctx, node):
                return node.id
    return None


def _zip_side_of(ctx: ModuleContext, site: ast.AST, element: str) -> str:
    """The zip argument `element` iterates (`parameters` for `param` of `for s_param, param in
    zip(self.shadow_params, parameters)`), '' when it is not a plain name."""
    loop = next((a for a in ctx.ancestors(site) if isinstance(a, ast.For)), None)
    if (
        loop is None
        or not isinstance(loop.iter, ast.Call)
        or not isinstance(loop.target, ast.Tuple)
    ):
        return ""
    for target, arg in zip(loop.target.elts, loop.iter.args, strict=False):
        if isinstance(target, ast.Name) and target.id == element and isinstance(arg, ast.Name):
            return arg.id
    return ""


def _zipped_argument(ctx: ModuleContext, arg: ast.expr, params: set[str]) -> bool:
    """A parameter of the helper, never rebound there but by a filter of itself
    (`parameters = [p for p in parameters if p.requires_grad]`, score_sde's EMA)."""
    if not (isinstance(arg, ast.Name) and arg.id in params):
        return False
    return all(v is arg or _filters(v, arg.id) for v in ctx.flow.definitions(arg))


def _filters(value: ast.AST, name: str) -> bool:
    return (
        isinstance(value, ast.ListComp)
        and len(value.generators) == 1
        and isinstance(value.generators[0].iter, ast.Name)
        and value.generators[0].iter.id == name
    )


def _object_state(arg: ast.expr, fn: ast.AST, params: set[str]) -> bool:
    """`self.shadow_params` in a method: the object's own copies (an EMA's shadow)."""
    return (
        isinstance(fn, ast.FunctionDef)
        and "self" in params
        and isinstance(arg, ast.Attribute)
        and isinstance(arg.value, ast.Name)
        and arg.value.id == "self"
    )


def _holds_trainable_parameters(ctx: ModuleContext, fn: ast.AST, name: str) -> bool:
    """The helper's argument `name` is filtered to what requires grad
    (`parameters = [p for p in parameters if p.requires_grad]`): its elements are parameters
    being trained, whoever calls it."""
    for node in walk_tree(fn):
        if isinstance(node, ast.Assign) and _filters(node.value, name):
            comp = node.value
            assert isinstance(comp, ast.ListComp)
            if any("requires_grad" in ast.unparse(cond) for cond in comp.generators[0].ifs):
                return True
    return False


def _parameter_origin(ctx: ModuleContext, name: ast.Name) -> ast.stmt | None:
    """The statement to wrap in `no_grad`: the `for p in model.parameters()` loop, or the
    update itself for a tensor created with `requires_grad=True`; None if `name` is neither."""
    for anc in ctx.ancestors(name):
        if isinstance(anc, ast.For) and _iterates_parameters(ctx, anc, name.id):
            return anc
        if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
            break
    # the binding that reaches the update when there is one: a notebook's `x = torch.rand(5, 4)`
    # updated in place, though `x` is rebound to a `requires_grad=True` tensor cells later
    for value in ctx.flow.reaching_or_all(name):
        if isinstance(value, ast.Call) and _requires_grad(value):
            return next(a for a in ctx.ancestors(name) if isinstance(a, ast.stmt))
    return None


def _fed_from_live_parameter(
    ctx: ModuleContext, site: ast.stmt | ast.expr, name: ast.Name
) -> str | None:
    """The name of the live parameter an in-place update of `name` reads, where `name` is the
    frozen side of `for p, p_targ in zip(net.parameters(), target.parameters())` and `p` the
    other (a soft target update, `p_targ.add_((1 - tau) * p)`, outside `no_grad`); None when
    the update reads it only through `.data`/`.detach()`."""
    loop = next(
        (a for a in ctx.ancestors(name) if isinstance(a, ast.For)),
        None,
    )
    if loop is None or not isinstance(loop.iter, ast.Call):
        return None
    it, target = loop.iter, loop.target
    if not (isinstance(it.func, ast.Name) and it.func.id == "zip"):
        return None
    if not isinstance(target, ast.Tuple) or len(target.elts) != len(it.args):
        return None
    sides = list(zip(it.args, target.elts, strict=True))
    frozen_side = any(
        isinstance(t, ast.Name) and t.id == name.id and _bound_to_parameters(ctx, a, t, t.id)
        for a, t in sides
    )
    live = {
        t.id
        for a, t in sides
        if isinstance(t, ast.Name)
        and t.id != name.id
        and _bound_to_parameters(ctx, a, t, t.id)
        and not _frozen(ctx, a)
    }
    if not frozen_side or not live:
        return None
    operands = [site.value] if isinstance(site, ast.AugAssign) else []
    if isinstance(site, ast.Call):
        operands = [*site.args, *(k.value for k in site.keywords)]
    for operand in operands:
        for node in ast.walk(operand):
            if isinstance(node, ast.Name) and node.id in live and not _detached_read(ctx, node):
                return node.id
    return None


def _detached_read(ctx: ModuleContext, name: ast.Name) -> bool:
    """`p.data`, `p.detach()`: the update reads the value, not the graph."""
    parent = ctx.parents.get(name)
    return isinstance(parent, ast.Attribute) and parent.attr in ("data", "detach")


def _parameter_view(ctx: ModuleContext, name: ast.Name) -> ast.expr | None:
    """The layer parameter (`conv.bias`, `self.fc.weight`) whose reshaped view `name` holds
    (`b = conv.bias.view(3, -1)`), when every binding of `name` is such a view."""
    values = ctx.flow.reaching_or_all(name)
    found: ast.expr | None = None
    for value in values:
        if not (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Attribute)
            and value.func.attr in _VIEWS
            and isinstance(value.func.value, ast.Attribute)
            and value.func.value.attr in ("weight", "bias")
        ):
            return None
        found = value.func.value
    return found


def _iterates_parameters(ctx: ModuleContext, loop: ast.For, name: str) -> bool:
    return _bound_to_parameters(ctx, loop.iter, loop.target, name)


def _bound_to_parameters(ctx: ModuleContext, it: ast.expr, target: ast.expr, name: str) -> bool:
    """`name` takes the parameters `it` yields: `for p in m.parameters()`, `for n, p in
    m.named_parameters()`, or one side of `zip(actor.parameters(), target.parameters())`
    (a soft target-network update)."""
    if not isinstance(it, ast.Call):
        return False
    if isinstance(it.func, ast.Name) and it.func.id == "zip":
        if not isinstance(target, ast.Tuple) or len(target.elts) != len(it.args):
            return False
        return any(
            _bound_to_parameters(ctx, a, t, name) and not _frozen(ctx, a)
            for a, t in zip(it.args, target.elts, strict=True)
        )
    if not isinstance(it.func, ast.Attribute) or it.func.attr not in _PARAMETER_ITERATORS:
        return False
    if isinstance(target, ast.Tuple) and len(target.elts) == 2:
        target = target.elts[1]  # for name, p in model.named_parameters()
    return isinstance(target, ast.Name) and target.id == name


def _frozen(ctx: ModuleContext, parameters: ast.expr) -> bool:
    """`ema.parameters()` of a model built with `.requires_grad_(False)`, or copied from one
    (`ema = copy.deepcopy(net).eval().requires_grad_(False)`, StyleGAN's `G_ema =
    copy.deepcopy(G)` of a `G` built frozen), or whose parameters a loop froze: its
    parameters record nothing."""
    if not isinstance(parameters, ast.Call) or not isinstance(parameters.func, ast.Attribute):
        return False
    holder = parameters.func.value
    return ctx.flow.derives_from(holder, _freezes) or ast.unparse(holder) in _frozen_by_loop(ctx)


def _frozen_by_loop(ctx: ModuleContext) -> frozenset[str]:
    """Models whose parameters a loop freezes one by one (ignite's EMA handler: `for param in
    self.ema_model.parameters(): param.detach_()`), by their text; memoised per module."""
    memo = ctx.memo_table("inplace_param_update_with_grad.frozen_by_loop")
    if "" not in memo:
        frozen = set()
        for loop in ctx.flow.nodes(ast.For):
            it, target = loop.iter, loop.target
            if isinstance(target, ast.Tuple) and len(target.elts) == 2:
                target = target.elts[1]
            if (
                isinstance(it, ast.Call)
                and isinstance(it.func, ast.Attribute)
                and it.func.attr in _PARAMETER_ITERATORS
                and isinstance(target, ast.Name)
                and any(_freezes_name(node, target.id) for node in loop.body)
            ):
                frozen.add(ast.unparse(it.func.value))
        memo[""] = frozenset(frozen)
    return memo[""]  # type: ignore[no-any-return]


def _freezes_name(statement: ast.stmt, name: str) -> bool:
    """`p.detach_()`, `p.requires_grad_(False)` or `p.requires_grad = False` as a statement."""
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call):
        call = statement.value
        func = call.func
        if not isinstance(func, ast.Attribute) or not isinstance(func.value, ast.Name):
            return False
        if func.value.id != name:
            return False
        return (func.attr == "detach_" and not call.args) or _freezes(call)
    if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
        target, value = statement.targets[0], statement.value
        return (
            isinstance(target, ast.Attribute)
            and target.attr == "requires_grad"
            and isinstance(target.value, ast.Name)
            and target.value.id == name
            and isinstance(value, ast.Constant)
            and value.value is False
        )
    return False


def _freezes(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "requires_grad_"
        and bool(node.args)
        and isinstance(node.args[0], ast.Constant)
        and node.args[0].value is False
    )


def _requires_grad(call: ast.Call) -> bool:
    flag = kwarg(call, "requires_grad")
    return isinstance(flag, ast.Constant) and flag.value is True
