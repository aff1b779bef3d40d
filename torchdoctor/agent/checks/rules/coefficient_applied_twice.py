"""coefficient-applied-twice: a weight multiplies a function's result inside it and again where
it is called."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import local_callee, walk_scope
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef
_MAX_HOPS = 3  # `x = k * a; y = x.mean(); return y`: names followed back from a return


class CoefficientAppliedTwice(Rule):
    """Detects a function whose every returned value is a product with a coefficient the
    module defines once (`gradient_penalty = lambda_gp * ((norm - 1) ** 2).mean(); return
    gradient_penalty`), called where its result is multiplied by that same coefficient again
    (`d_loss = ... + lambda_gp * compute_gradient_penalty(D, real, fake)`, or through the
    name the result is bound to). The coefficient is a module-level name bound to a number
    or a setting (`lambda_gp = 10`, `opt.lambda_gp`), or an attribute of the class both
    methods belong to (`self.lambda_gp`).

    Why it matters: the term is weighted by the square of its coefficient (100 instead of 10
    for a WGAN-GP penalty), and nothing fails: the loss is just balanced differently from
    the paper and the settings one tunes. PyTorch-GAN's DualGAN weighted its gradient
    penalty twice until `bfae5fc` ("Removed duplicate GP weight").

    Not reported: a coefficient that a function's parameter or local variable shadows, a
    function with some return not scaled by it, a product inside a sum (`k * x + (1 - k) *
    y` interpolates), coefficients bound to computed values (a mask, a tensor: masking twice
    changes nothing), callers that use the result without the coefficient, and an override
    that scales what the base class's method returns (`df = super()._downsampling_factor();
    return df * self.ds_factor`: `super()` runs the base's method, not this one).

    Example:
        lambda_gp = 10

        def compute_gradient_penalty(D, real, fake):
            ...
            return lambda_gp * ((gradients.norm(2, dim=1) - 1) ** 2).mean()

        gp = compute_gradient_penalty(D, real, fake)
        d_loss = -D(real).mean() + D(fake).mean() + lambda_gp * gp

    Fix: weight the term in one place: return the bare penalty and multiply where the loss
    is assembled (or the reverse).
    """

    id = "coefficient-applied-twice"
    point = 1
    severity = Severity.HIGH
    title = "Coefficient applied inside a function and again to its result"
    items: ClassVar[tuple[str, ...]] = ("1.3",)
    triggers = Triggers(("return",))

    def finish(self, ctx: ModuleContext) -> None:
        returns = _returns_with_products(ctx)
        if not returns:
            return
        callers = ctx.flow.callers
        for name, calls in callers.items():
            for fn in ctx.flow.functions.get(name, []):
                if id(fn) not in returns:
                    continue  # no product in it: it scales nothing it returns
                scaled = _scaled_returns(ctx, fn, returns[id(fn)])
                if not scaled:
                    continue
                self._check(ctx, fn, scaled, calls)

    def _check(
        self,
        ctx: ModuleContext,
        fn: FunctionNode,
        scaled: dict[str, ast.BinOp],
        calls: list[ast.Call],
    ) -> None:
        for call in calls:
            if not _calls(ctx, call, fn):
                continue
            caller = ctx.enclosing_function(call)
            for use in _uses_of_result(ctx, call, caller):
                factors = {ast.unparse(f) for f in _product_factors(use)}
                for key in sorted(set(scaled) & factors):
                    if not _same_coefficient(ctx, key, fn, caller):
                        continue
                    product = scaled[key]
                    ctx.report(
                        self,
                        product,
                        f"`{fn.name}` already multiplies what it returns by `{key}`, and line "
                        f"{use.lineno} multiplies its result by `{key}` again: the term is "
                        f"weighted by `{key}` squared; weight it in one place",
                        data={"coefficient": key, "function": fn.name, "caller": use.lineno},
                    )
                    return


def _returns_with_products(ctx: ModuleContext) -> dict[int, list[ast.Return]]:
    """id(function) -> its own `return`s, for the functions holding a `*` product (from the
    engine's index: no walk of any function body)."""
    by_type = ctx.nodes_by_type()
    with_products = {
        id(ctx.enclosing_function(node))
        for node in by_type.get(ast.BinOp, ())
        if isinstance(node.op, ast.Mult)  # type: ignore[attr-defined]
    }
    found: dict[int, list[ast.Return]] = {}
    for node in by_type.get(ast.Return, ()):
        assert isinstance(node, ast.Return)
        key = id(ctx.enclosing_function(node))
        if key in with_products:
            found.setdefault(key, []).append(node)
    return found


def _scaled_returns(
    ctx: ModuleContext, fn: FunctionNode, returns: list[ast.Return]
) -> dict[str, ast.BinOp]:
    """Coefficient text -> the product that scales it, for the coefficients every returned
    value of `fn` (`returns`: its own) is multiplied by (constant returns, `return 0`, aside)."""
    common: dict[str, ast.BinOp] | None = None
    for node in returns:
        if node.value is None:
            continue
        if isinstance(node.value, ast.Constant):
            continue
        found: dict[str, ast.BinOp] = {}
        for product in _products_returned(ctx, node.value):
            for factor in _product_factors(product):
                if _coefficient(ctx, factor, fn):
                    found.setdefault(ast.unparse(factor), product)
        common = found if common is None else {k: v for k, v in common.items() if k in found}
        if not common:
            return {}
    return common or {}


def _products_returned(ctx: ModuleContext, value: ast.expr) -> Iterator[ast.BinOp]:
    """The product a return gives: itself, the product a returned local name was bound to
    where the return reads it, or a reduction of one (`(k * x).mean()`)."""
    current: ast.expr | None = value
    for _ in range(_MAX_HOPS):
        while isinstance(current, ast.Call) and isinstance(current.func, ast.Attribute):
            if current.func.attr not in ("mean", "sum", "squeeze", "view", "reshape"):
                return
            current = current.func.value
        if isinstance(current, ast.BinOp) and isinstance(current.op, ast.Mult):
            yield current
            return
        if not isinstance(current, ast.Name):
            return
        current = ctx.flow.reaching(current)


def _product_factors(node: ast.expr) -> Iterator[ast.expr]:
    """The factors of a chain of `*` (`k * a * b` -> k, a, b)."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        yield from _product_factors(node.left)
        yield from _product_factors(node.right)
    else:
        yield node


def _root(node: ast.expr) -> ast.Name | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node if isinstance(node, ast.Name) else None


def _local_names(fn: FunctionNode) -> set[str]:
    arguments = fn.args
    names = {
        a.arg
        for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
        + [a for a in (arguments.vararg, arguments.kwarg) if a is not None]
    }
    for node in walk_scope(fn.body):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def _coefficient(ctx: ModuleContext, factor: ast.expr, fn: FunctionNode) -> bool:
    """`factor` is a setting the function reads from outside: a module-level name bound to a
    number or a setting (`lambda_gp = 10`, `lambda_gp = opt.lambda_gp`), an attribute of a
    module-level name (`opt.lambda_gp`), or an attribute of the method's `self` bound only
    to such values."""
    root = _root(factor)
    if root is None:
        return False
    if root.id == "self":
        if not (isinstance(factor, ast.Attribute) and isinstance(factor.value, ast.Name)):
            return False
        values = ctx.flow.definitions(factor)
        return bool(values) and all(map(_setting_value, values))
    if root.id in _local_names(fn):
        return False
    values = _module_values(ctx, root.id)
    if not values:
        return False
    if factor is root:
        return all(map(_setting_value, values))
    return True  # `opt.lambda_gp`: a field of the module's settings


def _module_values(ctx: ModuleContext, name: str) -> list[ast.expr]:
    values: list[ast.expr] = []
    for stmt in ctx.tree.body:
        if isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                if isinstance(target, ast.Name) and target.id == name:
                    values.append(stmt.value)
    return values


def _setting_value(value: ast.expr) -> bool:
    """A number, or a value read from settings (`opt.lambda_gp`, `args["w"]`, `float(x)`),
    never something computed from tensors."""
    if isinstance(value, ast.Constant):
        return isinstance(value.value, int | float) and not isinstance(value.value, bool)
    if isinstance(value, ast.UnaryOp):
        return _setting_value(value.operand)
    if isinstance(value, ast.BinOp):
        return _setting_value(value.left) and _setting_value(value.right)
    if isinstance(value, ast.Name | ast.Attribute | ast.Subscript):
        return True
    return (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Name)
        and value.func.id in ("float", "int")
    )


def _calls(ctx: ModuleContext, call: ast.Call, fn: FunctionNode) -> bool:
    """`call` reaches `fn`: `f(...)` of a module function, `self.f(...)` of a method of the
    caller's own class. `super().f(...)` runs the base class's `f`, never the caller's own
    class's (an override that scales what the base returns: audiocraft's
    `_downsampling_factor`, `df = super()._downsampling_factor(); return df * self.ds_factor`)."""
    owner = ctx.parents.get(fn)
    if isinstance(call.func, ast.Name):
        return isinstance(owner, ast.Module)
    receiver = call.func.value if isinstance(call.func, ast.Attribute) else None
    if (
        isinstance(receiver, ast.Call)
        and isinstance(receiver.func, ast.Name)
        and receiver.func.id == "super"
    ):
        return False
    return (
        isinstance(owner, ast.ClassDef)
        and local_callee(call) == fn.name
        and ctx.enclosing_class(call) is owner
    )


def _uses_of_result(
    ctx: ModuleContext, call: ast.Call, caller: FunctionNode | None
) -> Iterator[ast.BinOp]:
    """The products the call's result is a factor of: directly (`k * f(x)`), or through the
    name it is bound to where that binding is the one read (`gp = f(x)` ... `k * gp`)."""
    top = _top_product(ctx, call)
    if top is not None:
        yield top
        return
    statement = ctx.parents.get(call)
    if not (
        isinstance(statement, ast.Assign)
        and len(statement.targets) == 1
        and isinstance(statement.targets[0], ast.Name)
    ):
        return
    name = statement.targets[0].id
    for read in ctx.flow.reads_of(name):
        if ctx.enclosing_function(read) is not caller or ctx.flow.reaching(read) is not call:
            continue
        top = _top_product(ctx, read)
        if top is not None:
            yield top


def _top_product(ctx: ModuleContext, node: ast.expr) -> ast.BinOp | None:
    """The outermost `*` chain `node` is a factor of, if any."""
    top: ast.BinOp | None = None
    current: ast.AST = node
    parent = ctx.parents.get(current)
    while isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Mult):
        top = parent
        current = parent
        parent = ctx.parents.get(current)
    return top


def _same_coefficient(
    ctx: ModuleContext, key: str, fn: FunctionNode, caller: FunctionNode | None
) -> bool:
    """The caller's `key` is the function's: the module's name (not one the caller binds),
    or `self.x` of the same class."""
    if key.startswith("self."):
        return caller is not None and ctx.parents.get(caller) is ctx.parents.get(fn)
    root = key.split(".")[0]
    return caller is None or root not in _local_names(caller)
