"""layer-added-after-move: a new layer assigned onto a model that was already moved."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.analysis.vocabulary import PARAMETER_FREE_LAYERS
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import nodes_of, walk_scope
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import nn_layer, peel_mode_calls, terminal_name
from torchdoctor.agent.models import Severity

_MOVES = frozenset({"to", "cuda", "to_device"})
_NESTED_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
# Wrappers of a model already built: they hold its parameters, they add none.
_WRAPPERS = frozenset({"DataParallel", "DistributedDataParallel", "FullyShardedDataParallel"})
_CONTAINERS = frozenset({"Sequential", "ModuleList", "ModuleDict"})
# Calls given the model that place it themselves: wrappers, accelerators, trainers.
_PLACING_CALLS = frozenset(
    {
        "prepare",
        "prepare_model",
        "setup",
        "setup_module",
        "initialize",
        "fit",
        "validate",
        "test",
        "predict",
        "wrap",
        "DataParallel",
        "DistributedDataParallel",
        "FullyShardedDataParallel",
        "FSDP",
        "DDP",
    }
)
_MOVER_NAME = re.compile(r"(to_(var|cuda|device|gpu)|move_to(_device|_cuda|_gpu)?)")
_HOST = re.compile(r"""^['"]cpu""")


class LayerAddedAfterMove(Rule):
    """Detects a layer with parameters (`nn.Linear`, `nn.Conv2d`, an `nn.Sequential` holding
    one) assigned onto a model after that model was moved to a device in the same function
    or script (`model.to(device)`, `model = model.cuda()`), with no later move of the model or
    of the new layer: the transfer-learning head swap done one line too late
    (`model.to(device)`, then `model.out_head = torch.nn.Linear(emb_dim, num_classes)`,
    rasbt/LLMs-from-scratch `86f6c2d`). Also `model.classifier[6] = nn.Linear(...)` and
    `model.add_module("head", nn.Linear(...))`.

    Why it matters: `model.to(device)` moves the parameters the model has at that moment. A
    layer built afterwards is created on the CPU and stays there, so on a GPU the first
    forward fails with "Expected all tensors to be on the same device" (or, when the
    optimizer was built in between, the new layer is not even trained).

    Not reported: a layer built before the move, a layer moved where it is built
    (`nn.Linear(...).to(device)`), a model moved again afterwards (also by rebinding it,
    `model = model.to(device)`), or given afterwards to a call that places it
    (`accelerator.prepare(model)`, `trainer.fit(model)`, `DistributedDataParallel(model)`, a
    function of the same file that moves its argument), moves to the CPU or to a dtype, and
    layers without parameters (`nn.Identity()`, `nn.Dropout()`, pooling, activations), and
    an `nn.Parameter` made from a tensor of the moved model (`deform.weight =
    nn.Parameter(torch.ones_like(deform.weight))`, `.clone()`, `.new_zeros(...)`: on the
    model's device already); one made by a fresh factory (`torch.ones(...)`) is reported.

    Example:
        model.to(device)
        model.fc = nn.Linear(model.fc.in_features, num_classes)

    Fix: replace the layer first and move the model afterwards, or build the layer on the
    device: `nn.Linear(in_features, num_classes).to(device)`.
    """

    id = "layer-added-after-move"
    point = 1
    severity = Severity.HIGH
    title = "Layer added to a model after the model was moved to the device"
    items: ClassVar[tuple[str, ...]] = ("1.3",)
    triggers = Triggers(all_of=((".to(", ".cuda("), ("nn.", "torch.nn")))

    def finish(self, ctx: ModuleContext) -> None:
        movers = _functions_moving_an_argument(ctx)
        scopes: list[list[ast.stmt]] = [ctx.tree.body]
        for function in nodes_of(ctx, ast.FunctionDef, ast.AsyncFunctionDef):
            assert isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
            scopes.append(function.body)
        for body in scopes:
            # a body's own statements: the functions and classes it defines are scopes of
            # their own (walk_scope descends into the statements it is given)
            self._scope(ctx, [s for s in body if not isinstance(s, _NESTED_SCOPES)], movers)

    def _scope(self, ctx: ModuleContext, body: list[ast.stmt], movers: set[str]) -> None:
        moves: list[tuple[str, int]] = []  # (what is moved: `model`, `self.net`, line)
        placed: list[tuple[str, int]] = []  # ... rebound, or handed to a placing call
        # (the model it is added to, the new attribute, the statement, the layer)
        added: list[tuple[str, str, ast.Assign | ast.Call, ast.Call]] = []
        for node in walk_scope(body):
            if isinstance(node, ast.Call):
                moved = moved_expression(node)
                if moved:
                    moves.append((moved, node.lineno))
                module_added = _added_layer(ctx, node)
                if module_added is not None:
                    owner = ast.unparse(module_added[0])
                    added.append((owner, f"{owner}.{module_added[2]}", node, module_added[1]))
                callee = terminal_name(node.func)
                if callee in _PLACING_CALLS or callee in movers or _MOVER_NAME.fullmatch(callee):
                    for arg in (*node.args, *(k.value for k in node.keywords)):
                        placed.append((ast.unparse(arg), node.lineno))
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    for bound in _bound_expressions(target):
                        placed.append((bound, node.lineno))
                        if isinstance(node.value, ast.Call) and is_device_move(node.value):
                            moves.append((bound, node.lineno))
                    if (
                        isinstance(target, ast.Attribute | ast.Subscript)
                        and isinstance(node.value, ast.Call)
                        and _parameterful(ctx, node.value)
                    ):
                        added.append(
                            (ast.unparse(target.value), ast.unparse(target), node, node.value)
                        )
        for owner, attribute, site, layer in added:
            line = site.lineno
            before = [(m, at) for m, at in moves if at < line and _part_of(owner, m)]
            if not before:
                continue
            model = before[-1][0]
            if any(at > line and _part_of(attribute, m) for m, at in moves + placed):
                continue
            if _made_from_a_moved_tensor(ctx, layer, [m for m, at in moves if at < line]):
                continue
            moved_line = max(at for _, at in before)
            ctx.report(
                self,
                site,
                f"`{ast.unparse(layer.func)}(...)` is built on the CPU after `{model}` was moved "
                f"(line {moved_line}) and nothing moves `{model}` again: the new layer's "
                "weights stay on the CPU while the rest of the model is on the device; move "
                "the model after replacing the layer, or build it with `.to(device)`",
                data={"moved_line": moved_line},
            )


# Tensor calls whose result lies on the device of the tensor they are made from.
_LIKE_FACTORIES = frozenset(
    {"ones_like", "zeros_like", "full_like", "empty_like", "rand_like", "randn_like"}
)
_SAME_DEVICE_METHODS = frozenset(
    {
        "clone",
        "detach",
        "new_ones",
        "new_zeros",
        "new_full",
        "new_empty",
        "new_tensor",
        "contiguous",
        "chunk",
        "split",
        "narrow",
        "view",
        "reshape",
        "t",
        "transpose",
        "permute",
        "flatten",
        "squeeze",
        "unsqueeze",
        "expand",
        "repeat",
    }
)


def _made_from_a_moved_tensor(ctx: ModuleContext, layer: ast.Call, moved: list[str]) -> bool:
    """`deform.weight = nn.Parameter(torch.ones_like(deform.weight))` after `deform` was
    moved: the new parameter's data is made from a tensor of a model moved before it (this
    one, or another: `nn.Parameter(stock.w1.weight.chunk(R, 0)[rank].contiguous())`) by
    calls that keep the device (`torch.*_like(t)`, `t.new_zeros(...)`, `t.clone()`,
    `t.detach()`, `t.data`, views, chunks and items, times a number), so it lies on the
    device already (detectron2's deformable-convolution and torchtitan's sharding tests)."""
    if nn_layer(ctx, layer) not in ("Parameter", "Buffer") or not layer.args:
        return False
    data = layer.args[0]
    while True:
        if (isinstance(data, ast.Attribute) and data.attr == "data") or isinstance(
            data, ast.Subscript
        ):
            data = data.value
        elif isinstance(data, ast.BinOp) and isinstance(data.right, ast.Constant):
            data = data.left  # `w.clone() * 0`: arithmetic with a number keeps the device
        elif isinstance(data, ast.BinOp) and isinstance(data.left, ast.Constant):
            data = data.right
        elif (
            isinstance(data, ast.Call)
            and isinstance(data.func, ast.Attribute)
            and data.func.attr in _SAME_DEVICE_METHODS
        ):
            data = data.func.value
        elif (
            isinstance(data, ast.Call)
            and (ctx.call_qualname(data) or "").rsplit(".", 1)[-1] in _LIKE_FACTORIES
            and (ctx.call_qualname(data) or "").startswith("torch.")
            and data.args
            and not any(k.arg == "device" for k in data.keywords)
        ):
            data = data.args[0]
        else:
            break
    text = ast.unparse(data)
    return data is not layer.args[0] and any(_part_of(text, m) for m in moved)


def _part_of(owner: str, model: str) -> bool:
    """`model.classifier` is part of `model`; `self.criterion` is not part of `self.model`."""
    return owner == model or owner.startswith((model + ".", model + "["))


def _bound_expressions(target: ast.expr) -> list[str]:
    """What an assignment target rebinds: `model`, `self.model` (not `model.fc`'s owner)."""
    if isinstance(target, ast.Tuple | ast.List):
        return [b for element in target.elts for b in _bound_expressions(element)]
    if isinstance(target, ast.Starred):
        return _bound_expressions(target.value)
    return [ast.unparse(target)]


def is_device_move(call: ast.Call) -> bool:
    """`.to(device)` / `.cuda()`: not to the CPU, not a dtype cast."""
    func = call.func
    if not isinstance(func, ast.Attribute) or func.attr not in _MOVES:
        return False
    args = [*call.args, *(k.value for k in call.keywords if k.arg in ("device", None))]
    if func.attr == "to" and not args:
        return False
    for arg in args:
        text = ast.unparse(arg)
        if _HOST.match(text) or text in ("torch.device('cpu')", 'torch.device("cpu")'):
            return False
        if "dtype" in text or (
            isinstance(arg, ast.Attribute) and text.startswith("torch.") and "device" not in text
        ):
            return False  # .to(torch.float16), .to(self.dtype): a cast
    return True


def moved_expression(call: ast.Call) -> str:
    """`model.to(device)`, `self.net.cuda()`: the text of what is moved, or ''."""
    if not is_device_move(call):
        return ""
    assert isinstance(call.func, ast.Attribute)
    receiver = peel_mode_calls(call.func.value)  # model.float().to(device): the model itself
    if isinstance(receiver, ast.Name | ast.Attribute | ast.Subscript):
        return ast.unparse(receiver)
    return ""


def _added_layer(ctx: ModuleContext, call: ast.Call) -> tuple[ast.expr, ast.Call, str] | None:
    """`model.add_module("head", nn.Linear(...))`: (the model, the layer, its name)."""
    func = call.func
    if (
        isinstance(func, ast.Attribute)
        and func.attr in ("add_module", "register_module")
        and len(call.args) == 2
        and isinstance(call.args[1], ast.Call)
        and _parameterful(ctx, call.args[1])
    ):
        name = call.args[0]
        label = name.value if isinstance(name, ast.Constant) else ast.unparse(name)
        return func.value, call.args[1], str(label)
    return None


def _parameterful(ctx: ModuleContext, node: ast.AST) -> bool:
    """A torch.nn layer constructor that holds parameters or buffers."""
    layer = nn_layer(ctx, node)
    if not layer or layer.endswith("Loss") or layer in _WRAPPERS:
        return False
    if layer in _CONTAINERS:
        assert isinstance(node, ast.Call)
        return any(_parameterful(ctx, arg) for arg in node.args)
    return layer not in PARAMETER_FREE_LAYERS


def _functions_moving_an_argument(ctx: ModuleContext) -> set[str]:
    """Names of this file's functions that move one of their parameters (`def train(model,
    loader, device): model.to(device)`): given the model, they place the new layer too."""
    names: set[str] = set()
    for function in nodes_of(ctx, ast.FunctionDef, ast.AsyncFunctionDef):
        assert isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
        params = {a.arg for a in (*function.args.posonlyargs, *function.args.args)}
        params |= {a.arg for a in function.args.kwonlyargs}
        for node in walk_scope(function.body):
            if isinstance(node, ast.Call) and moved_expression(node).split(".")[0] in params:
                names.add(function.name)
                break
    return names
