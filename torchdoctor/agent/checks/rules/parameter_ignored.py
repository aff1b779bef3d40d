"""parameter-ignored: a parameter nothing reads while the body passes a constant in its place."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_tree
from torchdoctor.agent.models import Severity

# Decorators that leave the signature the caller's own: any other one (a registration, a
# dispatch or decomposition table, a graph substitution) imposes it.
_PLAIN_DECORATORS = frozenset(
    {"staticmethod", "classmethod", "no_grad", "inference_mode", "enable_grad", "autocast"}
)
_Function = ast.FunctionDef | ast.AsyncFunctionDef


class ParameterIgnored(Rule):
    """Detects a function parameter that nothing in the function reads while the body passes
    a constant where the parameter was meant: a keyword argument of the parameter's own name
    given a literal (`def masked_mean(t, mask, dim=1): ... t.sum(dim=1)`, `def
    __init__(self, ..., bias=False): ... Conv2d(..., bias=False)`), or, in a helper whose
    body is one `return` of a call, the parameter's own default literal (`def leaky_relu(p=0.1):
    return nn.LeakyReLU(0.1)`, audiolm-pytorch `450af49`).

    Why it matters: every caller's argument is silently dropped. The helper or layer behaves
    as its default whatever it is asked for (a slope, a reduction dimension, a bias, the
    number of cells of a stage), so an ablation or a configuration that changes it measures
    nothing, and the code reads as if it were honoured.

    Not reported: a parameter read anywhere in the function (nested functions and lambdas
    included), `self`/`cls`, names starting with `_` or `unused`, functions that read
    `locals()`/`vars()`, signatures the function does not own (stubs that only raise or pass;
    functions under a decorator other than `staticmethod`/`classmethod`/grad modes, such as
    `@abstractmethod` or a registration; functions the module passes on as values, as
    callbacks or dispatch entries: torch's own `sample_inputs_*`), a `None` handed on
    (`f(func=None)`: not applicable there), an override handing a constant to its parent's
    method of the same name (`return super().plot(x, add_loss=False)`: pinned on purpose), a
    default passed as a positional argument of a call in a longer body (a `3` for
    `in_chans=3` may be a kernel size), a keyword of a `forward` that also takes `**kwargs`
    (a shared model signature: `forward(imgs, labels=None, mode='infer', **kwargs)` beside
    `F.interpolate(..., mode='bilinear')`).

    Example:
        def leaky_relu(p=0.1):
            return nn.LeakyReLU(0.1)

    Fix: pass the parameter (`nn.LeakyReLU(p)`, `t.sum(dim=dim)`), or remove it from the
    signature if the value is fixed.
    """

    id = "parameter-ignored"
    point = 1
    severity = Severity.MEDIUM
    title = "Parameter ignored: a constant passed in its place"
    items: ClassVar[tuple[str, ...]] = ("1.1",)

    def applies(self, ctx: ModuleContext) -> bool:
        return ctx.flow.imports("torch")

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        for function, name, call in _candidates(ctx):
            if name in _reads(ctx, function):
                continue
            ctx.report(
                self,
                call,
                f"`{name}` is a parameter of `{function.name}` that nothing reads: this call "
                f"passes a constant in its place, so every caller's `{name}` is ignored",
                data={"parameter": name},
            )


def _candidates(ctx: ModuleContext) -> list[tuple[_Function, str, ast.Call]]:
    """(function, parameter, call) where the call passes a literal for the parameter: a
    same-named keyword, or its default in a one-`return` helper. One pass over the calls."""
    found: dict[tuple[int, str], tuple[_Function, str, ast.Call]] = {}
    for call in ctx.flow.nodes(ast.Call):
        assert isinstance(call, ast.Call)
        named = {
            k.arg
            for k in call.keywords
            if k.arg and isinstance(k.value, ast.Constant) and k.value.value is not None
        }
        if not named and not isinstance(ctx.parents.get(call), ast.Return):
            continue  # no literal keyword, and not a one-`return` helper's call: most calls
        function = ctx.enclosing_function(call)
        if function is None or _super_of(call, function):
            continue
        if not _shared_forward(function):
            for name in named & _parameters(ctx, function):
                found.setdefault((id(function), name), (function, name, call))
        for name in _defaults_returned(ctx, function, call):
            found.setdefault((id(function), name), (function, name, call))
    return list(found.values())


def _shared_forward(function: _Function) -> bool:
    """`def forward(self, imgs, labels=None, mode='infer', **kwargs)`: a model zoo's common
    signature that absorbs what callers pass to every model; the body's `mode='bilinear'`
    to `F.interpolate` is another setting of the same name."""
    return function.name == "forward" and function.args.kwarg is not None


def _super_of(call: ast.Call, function: _Function) -> bool:
    """`super().<function's name>(...)`: an override that pins its parent's argument on purpose
    (pytorch-forecasting's DeepAR plots with `add_loss_to_title=False` whatever it is asked)."""
    func = call.func
    return (
        isinstance(func, ast.Attribute)
        and func.attr == function.name
        and isinstance(func.value, ast.Call)
        and isinstance(func.value.func, ast.Name)
        and func.value.func.id == "super"
    )


def _parameters(ctx: ModuleContext, function: _Function) -> set[str]:
    """The parameters a finding may name (none for stubs)."""
    memo = ctx.memo_table("parameter_ignored.parameters")
    known = memo.get(id(function))
    if known is None:
        args = function.args
        names = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
        kept = {n for n in names if n not in {"self", "cls"} and not n.startswith(("_", "unused"))}
        known = memo[id(function)] = set() if _imposed(ctx, function) else kept
    return known


def _defaults_returned(ctx: ModuleContext, function: _Function, call: ast.Call) -> set[str]:
    """Parameters whose literal default `call` passes, when the function's body is one
    `return call`."""
    memo = ctx.memo_table("parameter_ignored.returned")
    if id(function) not in memo:
        body = _body(function)
        only = body[0] if len(body) == 1 else None
        memo[id(function)] = only.value if isinstance(only, ast.Return) else None
    if memo[id(function)] is not call:
        return set()
    args = function.args
    positional = [*args.posonlyargs, *args.args]
    with_default = positional[len(positional) - len(args.defaults) :]
    pairs = list(zip(with_default, args.defaults, strict=True))
    pairs += [
        (a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None
    ]
    passed = [*call.args, *(k.value for k in call.keywords)]
    allowed = _parameters(ctx, function)
    return {
        arg.arg
        for arg, default in pairs
        if arg.arg in allowed and _numeric(default) and any(_same(default, v) for v in passed)
    }


def _numeric(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
    )


def _same(default: ast.expr, value: ast.expr) -> bool:
    assert isinstance(default, ast.Constant)
    return (
        isinstance(value, ast.Constant)
        and type(value.value) is type(default.value)
        and value.value == default.value
    )


def _imposed(ctx: ModuleContext, function: _Function) -> bool:
    """A signature the function does not own: a stub (only `pass`/`raise`), a function under
    a registering decorator (`@register_meta(...)`, `@abstractmethod`), or one the module
    hands on as a value (`sample_inputs_func=sample_inputs_item`, `Cls.__init__ =
    patched_init`, a dispatch table): its caller passes every parameter, used or not."""
    for decorator in function.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
        if name not in _PLAIN_DECORATORS:
            return True
    if all(isinstance(s, ast.Pass | ast.Raise) for s in _body(function)):
        return True
    return function.name in _passed_as_values(ctx)


def _passed_as_values(ctx: ModuleContext) -> frozenset[str]:
    """The module's function names that it reads, as a name or an attribute, other than to
    call them (once per module; only a function's name is ever asked, so only reads of
    one are looked at, most of the module's names are not)."""
    memo = ctx.memo_table("parameter_ignored.values")
    if "" not in memo:
        flow = ctx.flow
        functions = {f.name for f in flow.nodes(ast.FunctionDef)}
        functions |= {f.name for f in flow.nodes(ast.AsyncFunctionDef)}
        parents = ctx.parents

        def called(node: ast.AST) -> bool:
            parent = parents.get(node)
            return isinstance(parent, ast.Call) and parent.func is node

        names = {
            n.id
            for n in flow.nodes(ast.Name)
            if n.id in functions and isinstance(n.ctx, ast.Load) and not called(n)
        }
        names |= {
            a.attr
            for a in flow.nodes(ast.Attribute)
            if a.attr in functions and isinstance(a.ctx, ast.Load) and not called(a)
        }
        memo[""] = frozenset(names)
    return frozenset(memo[""])


def _body(function: _Function) -> list[ast.stmt]:
    """The function's statements without its docstring (or other bare constants)."""
    return [
        s
        for s in function.body
        if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
    ]


def _reads(ctx: ModuleContext, function: _Function) -> set[str]:
    """Every name the function reads, nested scopes included; `locals`/`vars` stand for all."""
    memo = ctx.memo_table("parameter_ignored.reads")
    known = memo.get(id(function))
    if known is None:
        known = {
            n.id
            for n in walk_tree(function)
            if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Store)
        }
        if "locals" in known or "vars" in known:
            known = known | _parameters(ctx, function)
        memo[id(function)] = known
    return known
