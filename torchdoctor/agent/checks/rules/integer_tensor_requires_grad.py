"""integer-tensor-requires-grad: a tensor of integers (or booleans) asked to require gradients."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import kwarg
from torchdoctor.agent.models import Severity

_INTEGER_DTYPES = frozenset(
    {
        "long", "int", "int64", "int32", "int16", "int8", "uint8", "uint16", "uint32",
        "uint64", "short", "bool",
    }
)  # fmt: skip
_FACTORIES = frozenset(
    {"tensor", "as_tensor", "arange", "randint", "full", "zeros", "ones", "empty"}
)


class IntegerTensorRequiresGrad(Rule):
    """Detects a tensor whose dtype is an integer (or bool) type created with
    `requires_grad=True` (or made to require it by a chained `.requires_grad_()`):
    `torch.tensor(1, requires_grad=True)`, `torch.tensor([1, 2, 3], requires_grad=True)`,
    `torch.arange(10, requires_grad=True)`, `torch.randint(0, 5, (3,), requires_grad=True)`,
    `torch.zeros(3, dtype=torch.long, requires_grad=True)`.

    Why it matters: only floating-point and complex tensors can require gradients; PyTorch
    raises "Only Tensors of floating point and complex dtype can require gradients". Python
    integer literals give an int64 tensor, so `torch.tensor(1, requires_grad=True)` fails
    where `torch.tensor(1., requires_grad=True)` works. yunjey/pytorch-tutorial fixed exactly
    this in its first lesson (`2bfebb0`, "Fix requires_grad=True needs float tensor").

    The dtype is known when `dtype=` names an integer or bool type, or, without `dtype=`,
    when the data are integer or bool literals (`tensor`, `as_tensor`), the numbers are
    integer literals (`arange`, `full`'s fill value), or the factory is `randint`.
    Not reported: a float literal anywhere in the data (`[1, 2.0]` is float), a floating
    `dtype=`, data that are not literals (their dtype is unknown here).

    Example:
        w = torch.tensor(2, requires_grad=True)

    Fix: a floating literal or dtype: `torch.tensor(2.0, requires_grad=True)`,
    `torch.arange(10, dtype=torch.float32, requires_grad=True)`.
    """

    id = "integer-tensor-requires-grad"
    point = 1
    severity = Severity.HIGH
    title = "Integer tensor asked to require gradients"
    items: ClassVar[tuple[str, ...]] = ("1.5",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = _FACTORIES | {"requires_grad_"}
    triggers = Triggers(("requires_grad", "requires_grad_"))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "requires_grad_":
            factory = func.value
            if not (isinstance(factory, ast.Call) and _asks_grad(node, "requires_grad")):
                return
        else:
            factory = node
            if not _asks_grad(node, "requires_grad"):
                return
        name = _torch_factory(factory, ctx)
        if name is None:
            return
        dtype = _integer_dtype(factory, name)
        if dtype is not None:
            ctx.report(
                self,
                node,
                f"`torch.{name}(...)` here makes a {dtype} tensor, and only floating-point "
                "and complex tensors can require gradients: PyTorch raises a RuntimeError. "
                "Use a floating literal (`2.0`) or `dtype=torch.float32`.",
                data={"factory": name, "dtype_given": kwarg(factory, "dtype") is not None},
            )


def _asks_grad(call: ast.Call, keyword: str) -> bool:
    """`requires_grad=True` given, or `.requires_grad_()` / `.requires_grad_(True)`."""
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr == "requires_grad_":
        flag = call.args[0] if call.args else kwarg(call, "requires_grad")
        return flag is None or (isinstance(flag, ast.Constant) and flag.value is True)
    flag = kwarg(call, keyword)
    return isinstance(flag, ast.Constant) and flag.value is True


def _torch_factory(call: ast.Call, ctx: ModuleContext) -> str | None:
    qualified = ctx.qualname(call.func)
    if qualified is None or not qualified.startswith("torch."):
        return None
    name = qualified.removeprefix("torch.")
    return name if name in _FACTORIES else None


def _integer_dtype(call: ast.Call, name: str) -> str | None:
    """The integer/bool dtype `call` makes, when the code says it; None otherwise."""
    dtype = kwarg(call, "dtype")
    if dtype is not None:
        spelled = dtype.attr if isinstance(dtype, ast.Attribute) else None
        return f"torch.{spelled}" if spelled in _INTEGER_DTYPES else None
    if name == "randint":
        return "int64"
    if name in ("tensor", "as_tensor") and call.args:
        return _literal_kind(call.args[0])
    if name == "arange" and call.args:
        kinds = {_literal_kind(arg) for arg in call.args}
        return "int64" if kinds == {"int64"} else None
    if name == "full" and len(call.args) >= 2:
        return _literal_kind(call.args[1])
    return None


def _literal_kind(node: ast.expr) -> str | None:
    """'int64' / 'bool' for integer / boolean literals (nested lists and tuples of them);
    None for anything else, a float among them included."""
    kinds: set[str] = set()
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, ast.List | ast.Tuple):
            stack.extend(item.elts)
        elif isinstance(item, ast.UnaryOp) and isinstance(item.op, ast.USub | ast.UAdd):
            stack.append(item.operand)
        elif isinstance(item, ast.Constant) and isinstance(item.value, bool):
            kinds.add("bool")
        elif isinstance(item, ast.Constant) and isinstance(item.value, int):
            kinds.add("int64")
        else:
            return None
    if len(kinds) != 1:
        return None
    return kinds.pop()
