"""tensor-attribute-not-buffer: a module keeps a plain tensor that `model.to()` does not move."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import kwarg
from torchdoctor.agent.checks.device_scope import is_script, touches_accelerator
from torchdoctor.agent.checks.loops import walk_scope
from torchdoctor.agent.checks.patterns import registered_buffer_names, self_attribute
from torchdoctor.agent.models import Severity

_FACTORIES = frozenset(
    f"torch.{name}"
    for name in ("zeros", "ones", "empty", "full", "rand", "randn", "arange", "eye", "linspace",
                 "tensor", "as_tensor", "from_numpy", "Tensor", "FloatTensor", "DoubleTensor",
                 "LongTensor")
)  # fmt: skip
_MOVES = frozenset({"to", "cuda", "type_as", "to_device"})
_DEVICE_HOOKS = frozenset({"to", "cuda", "_apply"})


class TensorAttributeNotBuffer(Rule):
    """Detects a tensor built in an `nn.Module`'s `__init__` and kept as a plain attribute
    (`self.noise = torch.Tensor(n)`, `self.action_scale = torch.FloatTensor(...)`), with no
    `device=`, not registered (`register_buffer`, `nn.Parameter`), that another method of the
    module reads without moving it (`self.noise.normal_(...)`, `mean * self.scale`), in a
    file that runs on an accelerator. A class that overrides `to()`/`cuda()` to move its
    tensors counts only for the tensors the override forgets.

    Why it matters: `model.to(device)` and `model.cuda()` move parameters and buffers only.
    The plain tensor stays on the CPU, is missing from `state_dict()`, and the first GPU
    forward that mixes it with the module's outputs fails with "Expected all tensors to be on
    the same device" — or, with a hand-written `to()` override, fails only for the attribute
    the override forgot, or when the module is moved through a parent (`parent.to()` calls
    `_apply`, not the child's `to`).

    Also reported: state the module declares `None` in `__init__` and creates on first use
    in another method (`self.bank = torch.randn(dim, self.size)` once the first batch gives
    `dim`: lightly's memory bank), in any module but a script that never names a device (a
    library module runs wherever its caller moves it).

    Not reported: tensors created with `device=`, tensors the reading method first rebinds to
    a moved copy (`self.eps = self.eps.to(self.tau.device)` at the top of `forward`), tensors
    read only as indices of another tensor (`x[:, self.input_id.long()]`: a CUDA tensor takes
    CPU indices), 0-dim tensors of a number
    (`torch.tensor(0.0625)`, `torch.tensor(cfg.POS_WEIGHT)`: they mix with CUDA tensors),
    registered buffers and parameters, reads
    that move the tensor (`self.mask.to(x.device)`), attributes the class's own `to()` moves,
    modules in files that never mention a device, and test modules.

    Example:
        self.noise = torch.Tensor(num_actions)
        ...
        noise = self.noise.normal_(0.0, std=0.1)
        return mean + noise

    Fix: `self.register_buffer("noise", torch.empty(num_actions), persistent=False)` (or
    create the tensor in the method, on the input's device).
    """

    id = "tensor-attribute-not-buffer"
    point = 1
    severity = Severity.MEDIUM
    title = "Module tensor kept as a plain attribute, not a buffer"
    items: ClassVar[tuple[str, ...]] = ("1.3",)

    def applies(self, ctx: ModuleContext) -> bool:
        return (
            not ctx.test_module
            and bool(ctx.flow.module_classes)
            # a library module names no device yet runs wherever its caller moves it
            and (touches_accelerator(ctx.source) or not is_script(ctx.tree))
        )

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        on_device = touches_accelerator(ctx.source)
        for name in sorted(ctx.flow.module_classes):
            self._check_class(ctx, ctx.flow.classes[name], on_device)

    def _check_class(self, ctx: ModuleContext, cls: ast.ClassDef, on_device: bool) -> None:
        methods = {s.name: s for s in cls.body if isinstance(s, ast.FunctionDef)}
        init = methods.get("__init__")
        if init is None:
            return
        moved_by_hook = {
            attr
            for hook in _DEVICE_HOOKS
            if hook in methods
            for attr in _self_attributes_assigned(methods[hook])
        }
        created = [(node, False) for node in _plain_factories(ctx, init)] if on_device else []
        lazy = _declared_none(init) - registered_buffer_names(cls)
        if lazy:
            created += [
                (node, True)
                for name, method in methods.items()
                if name != "__init__" and name not in _DEVICE_HOOKS
                for node in _plain_factories(ctx, method)
                if self_attribute(node.targets[0]) in lazy
            ]
        for node, on_first_use in created:
            attr = self_attribute(node.targets[0])
            assert attr is not None and isinstance(node.value, ast.Call)
            if attr in moved_by_hook or _zero_dim(ctx, node.value):
                continue
            read = _unmoved_read(ctx, methods, attr)
            if read is None:
                continue
            made = (
                "is created on first use as a plain CPU tensor (declared None in __init__)"
                if on_first_use
                else "is a plain tensor"
            )
            ctx.report(
                self,
                node,
                f"`self.{attr}` {made}: model.to(device) and model.cuda() do not "
                f"move it (nor save it), and `{read}` reads it where the module's outputs may "
                f"be on the GPU; register it: `self.register_buffer('{attr}', ...)`",
            )


def _plain_factories(ctx: ModuleContext, method: ast.FunctionDef) -> list[ast.Assign]:
    """`self.x = torch.zeros(...)` in `method`: a tensor factory given no device, assigned
    to one attribute of the module."""
    return [
        node
        for node in walk_scope(method.body)
        if isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and self_attribute(node.targets[0]) is not None
        and isinstance(node.value, ast.Call)
        and ctx.flow.qualname_of(node.value) in _FACTORIES
        and kwarg(node.value, "device") is None
    ]


def _declared_none(init: ast.FunctionDef) -> set[str]:
    """Attributes `__init__` sets to None (`self.bank = None`): state the module creates on
    first use (a memory bank sized by the first batch)."""
    return {
        attr
        for node in walk_scope(init.body)
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Constant)
        and node.value.value is None
        for target in node.targets
        if (attr := self_attribute(target)) is not None
    }


def _zero_dim(ctx: ModuleContext, call: ast.Call) -> bool:
    """`torch.tensor(0.0625)`, `torch.tensor(cfg.MODEL.POSITIVE_WEIGHT)`: a 0-dim CPU tensor of
    a number (a literal or a configuration value) mixes with CUDA tensors like a number."""
    if ctx.flow.qualname_of(call) not in ("torch.tensor", "torch.as_tensor") or not call.args:
        return False
    value = call.args[0]
    if isinstance(value, ast.UnaryOp):
        value = value.operand
    if isinstance(value, ast.Attribute):
        return True
    return isinstance(value, ast.Constant) and isinstance(value.value, int | float)


def _self_attributes_assigned(fn: ast.FunctionDef) -> set[str]:
    return {
        attr
        for node in walk_scope(fn.body)
        if isinstance(node, ast.Assign)
        for target in node.targets
        if (attr := self_attribute(target)) is not None
    }


def _unmoved_read(ctx: ModuleContext, methods: dict[str, ast.FunctionDef], attr: str) -> str | None:
    """The first method other than `__init__` that reads `self.<attr>` without moving it."""
    for name, method in methods.items():
        if name == "__init__" or name in _DEVICE_HOOKS:
            continue
        moved_from = _moved_in_place(method, attr)
        for node in walk_scope(method.body):
            if not (
                isinstance(node, ast.Attribute)
                and node.attr == attr
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
                and isinstance(node.ctx, ast.Load)
            ):
                continue
            holder = ctx.parents.get(node)
            if isinstance(holder, ast.Attribute) and holder.attr in (*_MOVES, "device", "shape"):
                continue
            if node.lineno > moved_from or _index_only(ctx, node):
                continue
            return f"{name}()"
    return None


def _moved_in_place(method: ast.FunctionDef, attr: str) -> int:
    """The line where the method rebinds the attribute to a moved copy of itself
    (`self.eps = self.eps.to(self.tau.device)`, a filter-response norm's forward): reads after
    it see the tensor on the device. A large number when it does not."""
    for stmt in walk_scope(method.body):
        if (
            isinstance(stmt, ast.Assign)
            and len(stmt.targets) == 1
            and self_attribute(stmt.targets[0]) == attr
            and isinstance(stmt.value, ast.Call)
            and isinstance(stmt.value.func, ast.Attribute)
            and stmt.value.func.attr in _MOVES
            and self_attribute(stmt.value.func.value) == attr
            and any(s is stmt for s in method.body)  # not under a condition or in a loop
        ):
            return stmt.end_lineno or stmt.lineno
    return 1 << 30


def _index_only(ctx: ModuleContext, node: ast.Attribute) -> bool:
    """`x[:, self.input_id.long()]`: the tensor (or a cast of it) only indexes another one;
    a CUDA tensor takes CPU indices."""
    child: ast.AST = node
    parent = ctx.parents.get(child)
    while isinstance(parent, ast.Attribute) or (
        isinstance(parent, ast.Call) and parent.func is child
    ):
        child, parent = parent, ctx.parents.get(parent)
    if isinstance(parent, ast.Tuple):  # `x[:, idx]`: one of several indices
        child, parent = parent, ctx.parents.get(parent)
    return isinstance(parent, ast.Subscript) and parent.slice is child
