"""tensor-attribute-not-buffer: a module keeps a plain tensor that `model.to()` does not move."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import kwarg
from torchdoctor.agent.checks.device_scope import touches_accelerator
from torchdoctor.agent.checks.loops import walk_scope
from torchdoctor.agent.checks.smoke_tests import is_test_module
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

    Not reported: tensors created with `device=`, 0-dim tensors of a number
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
            not is_test_module(ctx.path)
            and bool(ctx.flow.module_classes)
            and touches_accelerator(ctx.source)
        )

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        for name in sorted(ctx.flow.module_classes):
            self._check_class(ctx, ctx.flow.classes[name])

    def _check_class(self, ctx: ModuleContext, cls: ast.ClassDef) -> None:
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
        for node in walk_scope(init.body):
            if not (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and _self_attribute(node.targets[0]) is not None
                and isinstance(node.value, ast.Call)
                and ctx.flow.qualname_of(node.value) in _FACTORIES
                and kwarg(node.value, "device") is None
            ):
                continue
            attr = _self_attribute(node.targets[0])
            assert attr is not None
            if attr in moved_by_hook or _zero_dim(ctx, node.value):
                continue
            read = _unmoved_read(ctx, methods, attr)
            if read is None:
                continue
            ctx.report(
                self,
                node,
                f"`self.{attr}` is a plain tensor: model.to(device) and model.cuda() do not "
                f"move it (nor save it), and `{read}` reads it where the module's outputs may "
                f"be on the GPU; register it: `self.register_buffer('{attr}', ...)`",
            )


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


def _self_attribute(node: ast.expr) -> str | None:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return node.attr if node.value.id == "self" else None
    return None


def _self_attributes_assigned(fn: ast.FunctionDef) -> set[str]:
    return {
        attr
        for node in walk_scope(fn.body)
        if isinstance(node, ast.Assign)
        for target in node.targets
        if (attr := _self_attribute(target)) is not None
    }


def _unmoved_read(ctx: ModuleContext, methods: dict[str, ast.FunctionDef], attr: str) -> str | None:
    """The first method other than `__init__` that reads `self.<attr>` without moving it."""
    for name, method in methods.items():
        if name == "__init__" or name in _DEVICE_HOOKS:
            continue
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
            return f"{name}()"
    return None
