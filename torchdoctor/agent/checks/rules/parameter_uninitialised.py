"""parameter-uninitialised: a Parameter made from uninitialised memory and never initialised."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import self_attribute
from torchdoctor.agent.models import Severity

_PARAMETERS = frozenset({"torch.nn.Parameter", "torch.nn.parameter.Parameter"})
# Constructors that return uninitialised memory when given sizes.
_UNINITIALISED = frozenset(
    {
        "torch.Tensor",
        "torch.FloatTensor",
        "torch.DoubleTensor",
        "torch.HalfTensor",
        "torch.cuda.FloatTensor",
    }
)
# A call that initialises what it is given (`nn.init.xavier_uniform_(self.w)`,
# `glorot(self.weight)`, `init_weights(self.p)`, `trunc_normal_(self.pos_embed)`).
_INITIALISER = re.compile(
    r"(init|reset|glorot|xavier|kaiming|he_|uniform|normal|orthogonal|zeros|ones|constant|"
    r"trunc|fill|copy|load|assign|set_)",
    re.IGNORECASE,
)
# Generic initialisation of every parameter or submodule (of this class or of a model of the
# module that contains it: RecBole's `for weight in self.parameters(): ...`).
_GENERIC_INIT = re.compile(
    r"for\s+[\w\s,()]+\s+in\s+[\w.]*\.(parameters|named_parameters|modules|named_modules|"
    r"children|state_dict)\(|\.apply\("
)


# An initialisation anywhere in the file (`nn.init.zeros_(...)`, `init.xavier_normal_`,
# `.data.uniform_(`, `.normal_(`): a layer library whose author initialises what it means to
# (DeepCTR's AGRU cells zero their biases; DIEN, in another file, fills their weights).
_INITIALISES_SOMETHING = re.compile(
    r"\binit\.\w+_\(|\.(uniform|normal|zero|fill|xavier_uniform|xavier_normal|"
    r"kaiming_uniform|kaiming_normal|orthogonal|trunc_normal|constant)_\("
)


class ParameterUninitialised(Rule):
    """Detects an `nn.Module` attribute built as `nn.Parameter(torch.Tensor(sizes))` (or
    `torch.FloatTensor(sizes)`) in a file that initialises nothing: no `nn.init.*_(...)`, no
    in-place fill (`.data.uniform_(-s, s)`, `.normal_()`), no assignment to the parameter's
    `.data`, no loop over parameters or `apply(...)`.

    Why it matters: the legacy constructors given sizes only allocate: the values are
    whatever the memory held (zeros on a fresh page, leftovers, denormals, NaN or huge
    numbers otherwise). A model built that way trains from garbage, differently on each run
    and machine, or produces NaN at the first forward. karpathy/pytorch-normalizing-flows
    fixed exactly this (`fce68b6`: `nn.Parameter(torch.Tensor(1, n))` -> `torch.zeros(1, n)`).

    Not reported: Parameters built from data (`torch.Tensor([0.5, 0.5])`) or initialised in
    the same expression (`torch.Tensor(n).uniform_(-1, 1)`), attributes given to an
    initialiser or filled in place anywhere in the module, classes with a generic
    initialisation (`for p in self.parameters(): ...`, `self.apply(init)`) or a
    `reset_parameters()`-style call to a method the class does not define (inherited),
    modules with a generic initialisation anywhere (a model's `for w in self.parameters():
    nn.init.normal_(w)` covers its submodules' tensors) or that call `load_state_dict`, files
    that initialise anything (a layer library: DeepCTR's AGRU cells zero their biases and
    leave their weights to DIEN's `named_parameters()` loop in another file), tensors
    allocated on a chosen device, `torch.empty` (modern model code fills it in an
    `_init_weights` hook or from a checkpoint elsewhere), and pytest modules.

    Example:
        class LeafParam(nn.Module):
            def __init__(self, n):
                super().__init__()
                self.p = nn.Parameter(torch.Tensor(1, n))

    Fix: build it initialised (`torch.zeros(1, n)`, `torch.randn(1, n) * 0.02`) or
    initialise it (`nn.init.normal_(self.p, std=0.02)`) in `reset_parameters()`.
    """

    id = "parameter-uninitialised"
    point = 4
    severity = Severity.HIGH
    title = "Parameter built from uninitialised memory"
    items: ClassVar[tuple[str, ...]] = ("4.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.ClassDef,)
    triggers = Triggers(all_of=(("Parameter",), ("Tensor(", "empty(")))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.ClassDef)
        if node.name not in ctx.flow.module_classes or ctx.test_module:
            return
        if "load_state_dict" in ctx.source or _GENERIC_INIT.search(ctx.source):
            return
        if _INITIALISES_SOMETHING.search(ctx.source):
            return  # the file initialises tensors: those it leaves, a user model does
        built: list[tuple[str, ast.Assign]] = []
        for inner in walk_tree(node):
            if isinstance(inner, ast.Assign) and len(inner.targets) == 1:
                attribute = self_attribute(inner.targets[0])
                if attribute is not None and _uninitialised_parameter(ctx, inner.value):
                    built.append((attribute, inner))
        if not built:
            return
        if _calls_inherited_method(node):
            return
        for attribute, assign in built:
            if sum(1 for name, _ in built if name == attribute) > 1:
                continue
            if _initialised(ctx, attribute, assign):
                continue
            ctx.report(
                self,
                assign.value,
                f"`self.{attribute}` is a Parameter made from uninitialised memory "
                f"(`{ast.unparse(assign.value)}`) and nothing in the module initialises it: "
                "training starts from whatever the memory held (garbage, possibly NaN). "
                "Build it initialised or call an nn.init function on it.",
            )


def _uninitialised_parameter(ctx: ModuleContext, value: ast.expr) -> bool:
    """`nn.Parameter(torch.Tensor(sizes))`, `Parameter(torch.empty(n, m))`."""
    if not isinstance(value, ast.Call) or ctx.flow.qualname_of(value) not in _PARAMETERS:
        return False
    inner = value.args[0] if value.args else None
    if not isinstance(inner, ast.Call) or ctx.flow.qualname_of(inner) not in _UNINITIALISED:
        return False
    if any(k.arg == "device" for k in inner.keywords):
        return False  # allocated on a chosen device to be loaded into (an inference model)
    if not inner.args:
        return False
    # data (`torch.Tensor([0.5])`, `torch.Tensor(weights)` of a name holding values) is not
    # a size: only literal integers, size expressions and `*shape` count
    return all(_size_like(arg) for arg in inner.args)


def _size_like(arg: ast.expr) -> bool:
    if isinstance(arg, ast.Constant):
        return isinstance(arg.value, int) and not isinstance(arg.value, bool)
    if isinstance(arg, ast.Starred):
        return True
    if isinstance(arg, ast.List | ast.Tuple | ast.ListComp | ast.Dict | ast.Set):
        return False
    if isinstance(arg, ast.Call):
        return isinstance(arg.func, ast.Name) and arg.func.id in ("int", "len", "max", "min")
    # a name or attribute may hold data (`torch.Tensor(weights)`): only sizes by their name
    text = ast.unparse(arg).lower()
    return isinstance(arg, ast.BinOp) or bool(
        re.search(r"(^|[._])(n|d|k|h|w|c|dim|size|num|in|out|hidden|features|channels)", text)
    )


def _calls_inherited_method(cls: ast.ClassDef) -> bool:
    """`self.reset_parameters()` / `self.init_weights()` where the class defines no such
    method: a base class initialises."""
    defined = {
        item.name for item in cls.body if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    for node in walk_tree(cls):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in ("self", "super")
            and _INITIALISER.search(node.func.attr)
            and not node.func.attr.startswith("__")
            and node.func.attr not in defined
        ):
            return True
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Call)
            and isinstance(node.func.value.func, ast.Name)
            and node.func.value.func.id == "super"
            and _INITIALISER.search(node.func.attr)
            and not node.func.attr.startswith("__")
        ):
            return True
    return False


def _initialised(ctx: ModuleContext, attribute: str, built: ast.Assign) -> bool:
    """Something in the module gives `self.<attribute>` a value: an initialiser call taking
    it, an in-place method on it or its `.data`, or an assignment to its `.data`."""
    for node in walk_tree(ctx.tree):
        # `for tensor in [self.w, self.b]: nn.init.xavier_normal_(tensor)`
        if (
            isinstance(node, ast.For)
            and _mentions(node.iter, attribute)
            and any(_initialiser_call(inner) for inner in walk_tree(node))
        ):
            return True
        if isinstance(node, ast.Call):
            if any(_mentions(arg, attribute) for arg in node.args) and _INITIALISER.search(
                ast.unparse(node.func)
            ):
                return True  # `glorot(self.att.view(2, heads, c))`, `init_(self.w)`
            func = node.func
            if (
                isinstance(func, ast.Attribute)
                and func.attr.endswith("_")
                and _names_attribute(func.value, attribute)
            ):
                return True
        elif isinstance(node, ast.Assign | ast.AugAssign) and node is not built:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                base = target.value if isinstance(target, ast.Subscript) else target
                if (
                    isinstance(base, ast.Attribute)
                    and base.attr == "data"
                    and _names_attribute(base.value, attribute)
                ):
                    return True
    return False


def _initialiser_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and bool(
        _INITIALISER.search(ast.unparse(node.func))
        or (isinstance(node.func, ast.Attribute) and node.func.attr.endswith("_"))
    )


def _mentions(expr: ast.expr, attribute: str) -> bool:
    """`self.<attribute>` anywhere in `expr` (`self.att.view(...)`, `[self.w, self.b]`)."""
    return any(isinstance(n, ast.Attribute) and n.attr == attribute for n in walk_tree(expr))


def _names_attribute(expr: ast.expr, attribute: str) -> bool:
    """`self.<attribute>`, `self.<attribute>.data`, `self.<attribute>[i]`, `x.<attribute>`."""
    while isinstance(expr, ast.Subscript) or (
        isinstance(expr, ast.Attribute) and expr.attr == "data"
    ):
        expr = expr.value
    return isinstance(expr, ast.Attribute) and expr.attr == attribute
