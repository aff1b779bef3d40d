"""backward-ignores-grad-output: a custom autograd backward returns a gradient that never
reads the incoming gradient."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_scope
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_ZERO_FACTORIES = frozenset({"zeros", "zeros_like", "new_zeros"})


class BackwardIgnoresGradOutput(Rule):
    """Detects a `torch.autograd.Function`'s `backward(ctx, grad_output, ...)` that returns,
    for some input, a gradient computed without the incoming gradient(s): `return
    (grad_output, gy)` where `gy` is built from saved tensors alone, `return
    torch.ones_like(x) * ctx.scale`.

    Why it matters: the chain rule multiplies each input's local derivative by the gradient
    flowing in from above. A gradient that ignores it is right only when this node is the
    final loss and nothing scales it; under AMP's loss scaling, a loss weight, gradient
    accumulation's division or any later operation, that input receives a gradient of the
    wrong size (AMP: 65536 times too large relative to the rest, or overflow skipped steps).
    BlinkDL/RWKV-LM fixed exactly this in its `L2Wrap` (`9df746d`: `return (grad_output, gy)`
    -> `(grad_output, grad_output * gy)`, "buggy when grad_output != 1").

    A returned value depends on the incoming gradient when it reads one of `backward`'s
    gradient parameters, or a local name assigned from (or updated in place with) one.
    Not reported: the request half of an asynchronous collective, whose backward waits on a
    handle kept on its context (`myreq = ctx.myreq; myreq.req.wait()`, torchrec's all-to-all
    Req/Wait pairs) and returns what the collective delivered: the incoming gradient belongs
    to a dummy output; a backward that waits on nothing of its context stays reported. Also
    not reported: names left None (`grad_alpha = None`), buffers a kernel fills given the
    gradient (also as pointers: `grad_u.data_ptr()`), helpers defined inside `backward`,
    returns under a test of the incoming gradient (a fused kernel that
    computes the gradients in `forward` and returns them as they are when `grad_output` is
    1, scaled otherwise), `None`, zeros (`torch.zeros_like(x)` never written into: a zero gradient
    is zero at any scale), backward methods of classes that are not autograd Functions.

    Example:
        @staticmethod
        def backward(ctx, grad_output):
            y = ctx.saved_tensors[0]
            gy = torch.zeros_like(y)
            gy.scatter_(-1, ids, maxx * factor)
            return (grad_output, gy)

    Fix: multiply by the incoming gradient: `return (grad_output, grad_output * gy)`.
    """

    id = "backward-ignores-grad-output"
    point = 4
    severity = Severity.HIGH
    title = "Custom backward ignores the incoming gradient"
    items: ClassVar[tuple[str, ...]] = ("4.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.ClassDef,)
    triggers = Triggers(("Function",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.ClassDef)
        if not any(_is_function_base(ctx, base) for base in node.bases):
            return
        for method in node.body:
            if isinstance(method, ast.FunctionDef) and method.name == "backward":
                self._check(method, ctx)

    def _check(self, method: ast.FunctionDef, ctx: ModuleContext) -> None:
        args = method.args
        positional = [*args.posonlyargs, *args.args]
        grads = {a.arg for a in positional[1:]}
        if args.vararg is not None:
            grads.add(args.vararg.arg)
        if not grads:
            return
        statements = list(walk_scope(method.body))
        if positional and _waits_on_a_request(statements, positional[0].arg):
            return  # the gradient arrives through the collective this backward waits for
        dependent = _dependent_names(statements, grads)
        zeros = _untouched_zeros(statements)
        for statement in statements:
            if not isinstance(statement, ast.Return) or statement.value is None:
                continue
            if ctx.enclosing_function(statement) is not method:
                continue  # a helper defined inside backward returns its own values
            if _under_a_test_of(ctx, statement, method, dependent):
                continue  # a branch chosen on the gradient's value (`if grad_output == 1:`)
            value = statement.value
            elements = value.elts if isinstance(value, ast.Tuple | ast.List) else [value]
            for element in elements:
                if _harmless(element, zeros) or _mentions(element, dependent):
                    continue
                ctx.report(
                    self,
                    element,
                    f"`{ast.unparse(element)}` is returned as a gradient but never reads the "
                    f"incoming gradient ({', '.join(sorted(grads))}): it is right only while "
                    "nothing scales this output (AMP, loss weights, accumulation). Multiply "
                    "it by the incoming gradient.",
                )


def _waits_on_a_request(statements: list[ast.AST], context: str) -> bool:
    """Whether the backward waits on a handle it keeps on its context (`myreq = ctx.myreq;
    myreq.req.wait()`, `ctx.work.wait()`): the request half of an asynchronous collective,
    whose gradient is what the collective delivers, not the incoming one (the output was a
    dummy tensor that only orders the autograd graph)."""
    from_context = {context}
    for node in statements:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Attribute)
            and _root_name(node.value) in from_context
        ):
            from_context |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return any(
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "wait"
        and isinstance(node.func.value, ast.Attribute)  # a handle kept on an object, not a name
        and _root_name(node.func.value) in from_context
        for node in statements
    )


def _root_name(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _under_a_test_of(
    ctx: ModuleContext, statement: ast.stmt, method: ast.FunctionDef, names: set[str]
) -> bool:
    """Whether an `if` around `statement` (within `method`) tests one of `names`."""
    for ancestor in ctx.ancestors(statement):
        if ancestor is method:
            return False
        if isinstance(ancestor, ast.If) and _mentions(ancestor.test, names):
            return True
    return False


def _is_function_base(ctx: ModuleContext, base: ast.expr) -> bool:
    qualified = ctx.qualname(base)
    if qualified is not None:
        return qualified in ("torch.autograd.Function", "torch.autograd.function.Function")
    return isinstance(base, ast.Attribute) and base.attr == "Function"


def _mentions(node: ast.AST, names: set[str]) -> bool:
    return any(isinstance(n, ast.Name) and n.id in names for n in ast.walk(node))


def _stored_names(target: ast.AST) -> set[str]:
    """The names a target binds or writes into (`x`, `x[i]`, `x.attr`, tuples of them)."""
    found: set[str] = set()
    for node in ast.walk(target):
        if isinstance(node, ast.Name):
            found.add(node.id)
    return found


def _dependent_names(statements: list[ast.AST], grads: set[str]) -> set[str]:
    """Local names whose value comes from (or was updated with) an incoming gradient: a
    fixed point over assignments, loops and in-place method calls."""
    dependent = set(grads)
    changed = True
    while changed:
        changed = False
        for node in statements:
            pairs: list[tuple[ast.AST, ast.AST]] = []
            if isinstance(node, ast.Assign):
                pairs = [(target, node.value) for target in node.targets]
            elif isinstance(node, ast.AugAssign | ast.AnnAssign) and node.value is not None:
                pairs = [(node.target, node.value)]
            elif isinstance(node, ast.For):
                pairs = [(node.target, node.iter)]
            elif isinstance(node, ast.NamedExpr):
                pairs = [(node.target, node.value)]
            elif isinstance(node, ast.Call):
                # in-place updates (`gy.scatter_(..., grad)`) and output arguments filled by a
                # kernel given the gradient (`wkv_cuda.backward(..., gy, gw, gu)`)
                inputs = [*node.args, *(k.value for k in node.keywords)]
                if isinstance(node.func, ast.Attribute):
                    pairs = [(node.func.value, arg) for arg in inputs]
                # buffers handed over whole or as pointers (`grad_u.data_ptr()` in `args=[...]`)
                outputs = [n for arg in inputs for n in ast.walk(arg) if isinstance(n, ast.Name)]
                pairs += [(out, arg) for out in outputs for arg in inputs]
            for target, value in pairs:
                if not _mentions(value, dependent):
                    continue
                new = _stored_names(target) - dependent
                if new:
                    dependent |= new
                    changed = True
    return dependent


def _untouched_zeros(statements: list[ast.AST]) -> set[str]:
    """Names bound only to zeros (`torch.zeros_like(x)`) or None and never written into."""
    bound: dict[str, bool] = {}
    written: set[str] = set()
    for node in statements:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    zero = _is_zeros(node.value) or _harmless(node.value, set())
                    bound[target.id] = bound.get(target.id, True) and zero
                else:
                    written |= _stored_names(target)
        elif isinstance(node, ast.AugAssign):
            written |= _stored_names(node.target)
        elif isinstance(node, ast.Call):
            # written in place, or handed to a call that may fill it
            written |= {a.id for a in node.args if isinstance(a, ast.Name)}
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and func.attr.endswith("_")
            ):
                written.add(func.value.id)
    return {name for name, zero in bound.items() if zero and name not in written}


def _is_zeros(value: ast.AST) -> bool:
    """A zeros factory, or None (a gradient left unset: `d_y = None`)."""
    if isinstance(value, ast.Constant) and value.value is None:
        return True
    return (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Attribute | ast.Name)
        and (value.func.attr if isinstance(value.func, ast.Attribute) else value.func.id)
        in _ZERO_FACTORIES
    )


def _harmless(element: ast.expr, zeros: set[str]) -> bool:
    """None, a zeros factory, or a name holding untouched zeros; also a run of them
    (`*[None] * 3`, `*none_grads` with `none_grads = [None] * n`: no gradient for the inputs
    that take none)."""
    if isinstance(element, ast.Starred):
        element = element.value
    if isinstance(element, ast.BinOp) and isinstance(element.op, ast.Mult):
        run = element.left if isinstance(element.left, ast.List | ast.Tuple) else element.right
        if isinstance(run, ast.List | ast.Tuple):
            return all(_harmless(item, zeros) for item in run.elts)
    if isinstance(element, ast.Constant) and element.value is None:
        return True
    if _is_zeros(element):
        return True
    return isinstance(element, ast.Name) and element.id in zeros
