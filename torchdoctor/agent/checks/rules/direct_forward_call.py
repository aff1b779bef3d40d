"""direct-forward-call: `module.forward(x)` instead of `module(x)`."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.defuse import identifier
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

# Libraries whose objects have a `forward` of their own that is no nn.Module's.
_OTHER_FRAMEWORKS = frozenset(
    {"cv2", "onnxruntime", "openvino", "tensorflow", "tflite_runtime", "paddle", "mxnet", "caffe"}
)


def _built_by_another_framework(ctx: ModuleContext, receiver: ast.expr) -> bool:
    built = list(ctx.flow.constructors(receiver))
    return bool(built) and all(
        (ctx.flow.qualname_of(call) or "").split(".", 1)[0] in _OTHER_FRAMEWORKS for call in built
    )


def _plain_local_object(ctx: ModuleContext, receiver: ast.expr) -> bool:
    """Every value `receiver` may hold is built by a class of this module that derives from
    nothing (`class DynamicNet:`, a boosting ensemble holding a list of nets), by calling it
    or one of its class methods (`DynamicNet.from_file(path)`): no nn.Module, so its own
    `forward` is its API and there is no `__call__` or hook to go through. Only the name's
    own bindings are read, each a call: a value reached through a parameter
    (`self.model = model`) may be anything the callers pass."""
    built = ctx.flow.definitions(receiver)
    if not built:
        return False
    for call in built:
        if not isinstance(call, ast.Call):
            return False
        func = call.func
        if isinstance(func, ast.Attribute):
            func = func.value  # `Cls.from_file(...)`: a factory of the class
        cls = ctx.flow.classes.get(func.id) if isinstance(func, ast.Name) else None
        if cls is None or cls.name in ctx.flow.module_classes:
            return False
        if any(identifier(base) != "object" for base in cls.bases) or cls.keywords:
            return False
    return True


_RREF_PROXIES = frozenset({"remote", "rpc_async", "rpc_sync"})


def _rpc_proxy(ctx: ModuleContext, receiver: ast.expr) -> bool:
    """`rref.remote().forward(x)` or a `RemoteModule`: torch.distributed.rpc's API, whose
    `forward` is a remote call (the module is called on its owner); there is no `__call__`."""
    if (
        isinstance(receiver, ast.Call)
        and isinstance(receiver.func, ast.Attribute)
        and receiver.func.attr in _RREF_PROXIES
    ):
        return True
    return any(
        (ctx.flow.qualname_of(c) or "").startswith("torch.distributed.")
        for c in ctx.flow.constructors(receiver)
    )


class DirectForwardCall(Rule):
    """Detects a module's `forward` method called directly (`model.forward(x)`,
    `self.encoder.forward(x)`).

    Why it matters: `nn.Module.__call__` runs the forward pre-hooks and hooks that AMP, FSDP,
    quantization, pruning, profilers and this tool's own probes install; calling `forward`
    skips all of them, so those features silently do nothing for that call. Calling the parent
    implementation (`super().forward(x)`, `nn.Module.forward(self, x)`) or `self.forward` from
    the class's own methods is fine and is not reported, and so is the `forward` of an object
    another framework built (OpenCV's `cv2.dnn` nets) or of an RPC proxy (`rref.remote()`,
    a `RemoteModule`), whose `forward` is the remote call, or of an instance of a plain class
    of the same module (one with no base class: a boosting ensemble's own `forward`).

    Example:
        logits = model.forward(images)

    Fix: call the module: `logits = model(images)`.
    """

    id = "direct-forward-call"
    point = 10
    severity = Severity.LOW
    title = "forward() called directly"
    items: ClassVar[tuple[str, ...]] = ("10.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset({"forward"})
    triggers = Triggers(("forward",))

    def __init__(self) -> None:
        self._calls: list[ast.Call] = []

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        func = node.func
        if not isinstance(func, ast.Attribute) or func.attr != "forward":
            return
        receiver = func.value
        if (
            isinstance(receiver, ast.Call)
            and isinstance(receiver.func, ast.Name)
            and receiver.func.id == "super"
        ):
            return
        if isinstance(receiver, ast.Name) and receiver.id in ("self", "cls"):
            return
        if node.args and isinstance(node.args[0], ast.Name) and node.args[0].id == "self":
            return  # Base.forward(self, x): an explicit parent call
        if ctx.qualname(receiver) is not None:
            return  # a class reached through an import, e.g. nn.Linear.forward
        if isinstance(receiver, ast.Name) and receiver.id[:1].isupper():
            return  # a local class: an unbound call
        self._calls.append(node)

    def finish(self, ctx: ModuleContext) -> None:
        # The data flow is asked only here: built during the walk, it would see half the module.
        for call in self._calls:
            assert isinstance(call.func, ast.Attribute)
            if _built_by_another_framework(ctx, call.func.value):
                continue  # `net = cv2.dnn.readNetFromONNX(w)`: `net.forward()` is OpenCV's own
            if _rpc_proxy(ctx, call.func.value) or _plain_local_object(ctx, call.func.value):
                continue
            ctx.report(
                self,
                call,
                "forward() is called directly: module hooks (AMP, FSDP, profilers, probes) "
                "are skipped; call the module instead",
            )
