"""numpy-of-graph-tensor: `.numpy()` of a model's output or loss in the graph or on the GPU."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.gradmode import grad_mode_at
from torchdoctor.agent.checks.analysis.vocabulary import OTHER_FRAMEWORKS
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import (
    on_a_cpu_branch,
    stateless_module,
    terminal_name,
    uses_cuda,
)
from torchdoctor.agent.models import Severity

_DETACHES = frozenset({"detach", "data", "detach_"})
_TO_HOST = frozenset({"cpu"})
_KEEPS = frozenset(
    {"squeeze", "unsqueeze", "view", "reshape", "float", "double", "long", "int", "argmax",
     "max", "min", "sum", "mean", "softmax", "sigmoid", "flatten", "permute", "transpose",
     "contiguous", "clone", "t", "round", "abs", "exp", "log", "type_as"}
)  # fmt: skip
"""Methods between the tensor and `.numpy()` that keep its device (and its graph, except the
integer-valued `argmax`, `long`, `int`, `round` ones: see `_INTEGER_RESULTS`)."""
_INTEGER_RESULTS = frozenset({"argmax", "argmin", "long", "int", "round", "eq", "ne", "ge"})
"""Results without gradients: an integer tensor never requires grad."""


class NumpyOfGraphTensor(Rule):
    """Detects `.numpy()` of a model's output or a loss that is still part of the autograd
    graph (computed with grad on, no `.detach()`/`.data` on the way) or, in a script that
    puts its model on CUDA, still on the device (no `.cpu()` on the way):
    `loss.data.numpy()` on the GPU, `model(x).numpy()`, `pred.cpu().numpy()` in training.

    Why it matters: both raise. `numpy()` of a tensor that requires grad fails with "Can't call
    numpy() on Tensor that requires grad", and of a CUDA tensor with "can't convert cuda:0
    device type tensor to numpy" — so a script whose CPU run worked stops on its first
    logging step on the GPU. MorvanZhou/PyTorch-Tutorial fixed exactly this in its GPU
    lesson (`99158fd`: `loss.data.numpy()` -> `loss.data.cpu().numpy()`).

    The tensor is followed back through names, views and reductions to the call that made it;
    reported when that is a model call or a loss. Not reported: `.detach()`, `.data`,
    `.item()`, `.tolist()` on the way for the graph, `.cpu()` for the device; values made with
    grad off (`torch.no_grad()`, `inference_mode`, an evaluation helper only called so);
    modules that also import TensorFlow, Keras or JAX (a backend's tensors have `.numpy()`);
    integer results (`argmax`, `.long()`: never in the graph); outputs of a local module with
    no parameter (also run as `module.forward(...)`) on an input that needs no grad; scripts
    that never use CUDA for the device.

    Example:
        print('train loss: %.4f' % loss.data.numpy())

    Fix: `loss.item()` for a scalar; `t.detach().cpu().numpy()` for a tensor.
    """

    id = "numpy-of-graph-tensor"
    point = 1
    severity = Severity.HIGH
    title = "numpy() of a tensor in the graph or on the GPU"
    items: ClassVar[tuple[str, ...]] = ("1.3",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset({"numpy"})
    triggers = Triggers(("numpy",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        func = node.func
        if not isinstance(func, ast.Attribute) or func.attr != "numpy" or node.args:
            return
        chain, base = _chain(func.value)
        if chain is None:
            return
        detached = bool(_DETACHES & chain) or bool(_INTEGER_RESULTS & chain)
        on_host = bool(_TO_HOST & chain)
        if detached and on_host:
            return
        producer = self._producer(ctx, base)
        if producer is None or ctx.flow.imports(*OTHER_FRAMEWORKS):
            return  # beside TensorFlow or JAX (yolov5's export backends) `x.numpy()` is theirs
        if (
            not detached
            and grad_mode_at(ctx, producer) == "on"
            and not _rebound_with_grad_off(ctx, node, base)
        ):
            problem = (
                "still requires grad (made with autograd on, no `.detach()` on the way): "
                'numpy() raises "Can\'t call numpy() on Tensor that requires grad"'
            )
        elif (
            not on_host
            and uses_cuda(ctx)
            and _placed_on_device(ctx, producer)
            and not on_a_cpu_branch(ctx, node)
        ):
            problem = (
                "is on the GPU when the script runs on CUDA (no `.cpu()` on the way): numpy() "
                'raises "can\'t convert cuda device type tensor to numpy"'
            )
        else:
            return
        ctx.report(
            self,
            node,
            f"`{ast.unparse(func.value)}` comes from `{ast.unparse(producer.func)}` and "
            f"{problem}. Use `.item()` for a scalar, `.detach().cpu().numpy()` for a tensor.",
            data={"detach": not detached, "cpu": not on_host and uses_cuda(ctx)},
        )

    @classmethod
    def _producer(cls, ctx: ModuleContext, base: ast.expr, depth: int = 0) -> ast.Call | None:
        """The model or loss call that made `base` (through names, views and casts, and
        through parameter-free layers, built inline, `nn.Softmax(dim=-1)(logits)`, or local
        modules with no parameter, `Swish()(d)` or `dequant.forward(inp, ldj)`: their input
        made it)."""
        flow = ctx.flow
        for call in flow.producers(base):
            func = call.func
            if isinstance(func, ast.Attribute) and func.attr in (_DETACHES | _TO_HOST):
                return None  # detached or moved where it was bound: `out = net(x).detach()`
            if isinstance(func, ast.Attribute) and func.attr in ("item", "tolist"):
                return None
            if isinstance(func, ast.Call) and (ctx.qualname(func.func) or "").startswith(
                "torch.nn."
            ):
                if depth > 2 or not call.args:
                    return None
                return cls._producer(ctx, call.args[0], depth + 1)
            if flow.is_model_call(call) and _stateless(ctx, func):
                if depth > 2 or not call.args:
                    return None
                return cls._producer(ctx, call.args[0], depth + 1)
            if flow.is_model_call(call) or flow.is_loss_callee(func):
                return call
        return None


def _stateless(ctx: ModuleContext, model: ast.expr) -> bool:
    """A model built as a module with no parameter (`s = Swish(); res = s(d)`): its output
    requires grad only if its input does; also run through its `forward`
    (`dequant_module.forward(inp, ldj, reverse=True)`)."""
    if isinstance(model, ast.Attribute) and model.attr == "forward":
        model = model.value
    return isinstance(model, ast.Name) and any(
        stateless_module(ctx, built) for built in ctx.flow.producers(model)
    )


_MOVES = frozenset({"to", "cuda"})


def _placed_on_device(ctx: ModuleContext, producer: ast.Call) -> bool:
    """The model that made the value was moved to a device (`model.cuda()`, `model =
    Net().to(device)`, `self.net = self.net.to(device)`); for a loss, the model whose output
    it was given. A notebook or script that uses CUDA for one model says nothing of another
    (`model_0` trained on the CPU before `model_1.to(device)`)."""
    flow = ctx.flow
    call = producer
    if not flow.is_model_call(call) and call.args:
        call = next((c for c in flow.producers(call.args[0]) if flow.is_model_call(c)), None)  # type: ignore[assignment]
        if call is None:
            return False
    model = terminal_name(call.func.value if _is_forward(call) else call.func)  # type: ignore[attr-defined]
    if not model:
        return False
    for moved in ctx.nodes_by_type().get(ast.Call, ()):
        func = moved.func  # type: ignore[attr-defined]
        if not (isinstance(func, ast.Attribute) and func.attr in _MOVES):
            continue
        receiver = func.value
        while isinstance(receiver, ast.Call) and isinstance(receiver.func, ast.Attribute):
            receiver = receiver.func.value  # `model.float().cuda()`
        if terminal_name(receiver) == model:
            return True
        parent = ctx.parents.get(moved)
        if isinstance(parent, ast.Assign) and any(
            terminal_name(t) == model for t in parent.targets
        ):
            return True  # `model = Net().to(device)`
    return False


def _rebound_with_grad_off(ctx: ModuleContext, site: ast.Call, base: ast.expr) -> bool:
    """The conversion runs with grad off and the name is also made by a model there: ivadomed's
    validation loop re-binds `preds = model(x)` in both branches of an `if` under `no_grad()`
    (no single binding reaches the read), the training loop's `preds` does not reach it."""
    return grad_mode_at(ctx, site) == "off" and any(
        ctx.flow.is_model_call(call) and grad_mode_at(ctx, call) == "off"
        for call in ctx.flow.producers(base)
    )


def _is_forward(call: ast.Call) -> bool:
    return isinstance(call.func, ast.Attribute) and call.func.attr == "forward"


def _chain(expr: ast.expr) -> tuple[set[str] | None, ast.expr]:
    """The methods and attributes between `.numpy()` and the value they start from
    (`loss.data.cpu()` -> ({'data', 'cpu'}, `loss`)); None when one of them may change the
    device or the graph in a way not known here."""
    seen: set[str] = set()
    while True:
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute):
            name = expr.func.attr
            if name == "to":
                return None, expr  # `.to(device)` / `.to("cpu")`: the target is not read here
            if name not in _DETACHES | _TO_HOST | _KEEPS | _INTEGER_RESULTS:
                return seen, expr
            seen.add(name)
            expr = expr.func.value
        elif isinstance(expr, ast.Attribute) and expr.attr in _DETACHES:
            seen.add(expr.attr)
            expr = expr.value
        elif isinstance(expr, ast.Subscript):
            expr = expr.value
        else:
            return seen, expr
