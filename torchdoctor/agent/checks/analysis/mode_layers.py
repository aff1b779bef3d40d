"""Whether a model behaves the same in train() and eval(): knowable only when every layer it
builds is seen (local classes, `torch.nn` layers); anything else counts as mode-dependent."""

from __future__ import annotations

import ast
import re
from typing import TYPE_CHECKING

from torchdoctor.agent.checks.analysis.defuse import identifier
from torchdoctor.agent.checks.loops import walk_tree

if TYPE_CHECKING:
    from torchdoctor.agent.checks.base import ModuleContext

# torch.nn layers whose forward ignores `self.training` (no dropout, no running statistics).
_MODE_FREE_LAYERS = frozenset(
    {
        "Linear", "Bilinear", "Identity", "Flatten", "Unflatten", "Embedding", "EmbeddingBag",
        "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
        "LayerNorm", "GroupNorm", "RMSNorm", "LocalResponseNorm",
        "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d",
        "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "AdaptiveMaxPool1d",
        "AdaptiveMaxPool2d", "AdaptiveMaxPool3d", "Upsample", "PixelShuffle", "PixelUnshuffle",
        "ReLU", "ReLU6", "LeakyReLU", "PReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish",
        "Sigmoid", "Tanh", "Softplus", "Softsign", "Hardtanh", "Hardswish", "Hardsigmoid",
        "LogSigmoid", "Softmax", "LogSoftmax", "Softmin", "Threshold", "Tanhshrink",
        "ZeroPad2d", "ConstantPad1d", "ConstantPad2d", "ReflectionPad2d", "ReplicationPad2d",
        "Parameter", "ParameterList", "ParameterDict",
    }
)  # fmt: skip
_CONTAINERS = frozenset({"Sequential", "ModuleList", "ModuleDict"})
_RECURRENT = {"RNN": 5, "LSTM": 5, "GRU": 5}
"""Recurrent layers, by the position of `dropout` among their arguments: dropout between
stacked layers is their only mode-dependent part, off by default."""
_RECURRENT_CELLS = frozenset({"RNNCell", "LSTMCell", "GRUCell"})
_MODE_FUNCTIONS = frozenset(
    {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
     "batch_norm", "instance_norm", "rrelu"}
)  # fmt: skip
_MAX_DEPTH = 6
_BUILTINS = frozenset({"int", "float", "bool", "str", "list", "dict", "tuple", "set", "len",
                       "range", "max", "min", "sum", "abs", "round", "getattr"})  # fmt: skip


def mode_independent(ctx: ModuleContext, model: ast.expr) -> bool:
    """True when every way `model` is built is seen and none has a layer that acts
    differently in training mode (dropout, batch norm, `self.training` branches)."""
    built = list(ctx.flow.constructors(model))
    return bool(built) and all(_call_mode_free(ctx, call, 0) for call in built)


def _call_mode_free(ctx: ModuleContext, call: ast.Call, depth: int) -> bool:
    if depth > _MAX_DEPTH:
        return False
    if isinstance(call.func, ast.Name) and call.func.id in ctx.flow.classes:
        return _class_mode_free(ctx, ctx.flow.classes[call.func.id], depth + 1)
    qual = ctx.flow.qualname_of(call) or ""
    if not qual.startswith("torch.nn.") or qual.startswith("torch.nn.functional."):
        return False
    name = qual.rsplit(".", 1)[-1]
    if name in _CONTAINERS:
        parts = [a for a in call.args if not isinstance(a, ast.Starred)]
        return len(parts) == len(call.args) and all(
            _part_mode_free(ctx, part, depth + 1) for part in parts
        )
    if name in _RECURRENT:
        return not _recurrent_dropout(call, _RECURRENT[name])
    return name in _MODE_FREE_LAYERS or name in _RECURRENT_CELLS


def _recurrent_dropout(call: ast.Call, position: int) -> bool:
    """`nn.GRU(h, h, n, dropout=p)`: True unless the dropout is absent or a literal zero."""
    if any(k.arg is None for k in call.keywords) or any(
        isinstance(a, ast.Starred) for a in call.args
    ):
        return True  # `**config`: the dropout may be in it
    given = next((k.value for k in call.keywords if k.arg == "dropout"), None)
    if given is None and len(call.args) > position:
        given = call.args[position]
    return given is not None and not (
        isinstance(given, ast.Constant) and given.value in (0, 0.0) and given.value is not False
    )


def _part_mode_free(ctx: ModuleContext, part: ast.expr, depth: int) -> bool:
    if isinstance(part, ast.Call):
        return _call_mode_free(ctx, part, depth)
    if isinstance(part, ast.List | ast.Tuple):
        return all(_part_mode_free(ctx, e, depth) for e in part.elts)
    return False


def class_mode_free(ctx: ModuleContext, cls: ast.ClassDef) -> bool:
    """A module class whose every layer is seen and none acts differently in training mode."""
    return _class_mode_free(ctx, cls, 0)


def _class_mode_free(ctx: ModuleContext, cls: ast.ClassDef, depth: int) -> bool:
    """A local module class: its bases are nn.Module or mode-free local classes, and every
    layer, functional call and attribute in its body is known to ignore the mode."""
    for base in cls.bases:
        if isinstance(base, ast.Name) and base.id in ctx.flow.classes:
            if not _class_mode_free(ctx, ctx.flow.classes[base.id], depth + 1):
                return False
        elif ctx.qualname(base) != "torch.nn.Module":
            return False
    if _runs_a_module_it_is_given(cls):
        return False
    for node in walk_tree(cls):
        if isinstance(node, ast.Attribute) and node.attr in ("training", "train", "eval"):
            return False
        if not isinstance(node, ast.Call):
            continue
        qual = ctx.flow.qualname_of(node) or ""
        if qual.startswith("torch.nn.init."):
            continue  # initialises weights; builds no layer
        if qual.startswith("torch.nn.functional."):
            if qual.rsplit(".", 1)[-1] in _MODE_FUNCTIONS:
                return False
        elif qual.startswith("torch.nn.") or (
            isinstance(node.func, ast.Name) and node.func.id in ctx.flow.classes
        ):
            if not _call_mode_free(ctx, node, depth):
                return False
        elif _builds_attribute(ctx, node) and not _plain_value(ctx, node, qual):
            return False  # `self.backbone = build(cfg)`: a layer this module cannot see
    return True


def _runs_a_module_it_is_given(cls: ast.ClassDef) -> bool:
    """A wrapper that keeps a network handed to its constructor and calls it (a diffusion
    sampler's `self.model = model`, then `self.model(x_t, t)`): its mode is that network's,
    which this class does not show."""
    called = {
        node.func.attr
        for node in walk_tree(cls)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "self"
    }
    for fn in cls.body:
        if not (isinstance(fn, ast.FunctionDef) and fn.name == "__init__"):
            continue
        params = {a.arg for a in [*fn.args.args, *fn.args.kwonlyargs]}
        for node in walk_tree(fn):
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Name)
                and node.value.id in params
                and any(
                    isinstance(t, ast.Attribute)
                    and isinstance(t.value, ast.Name)
                    and t.value.id == "self"
                    and t.attr in called
                    for t in node.targets
                )
            ):
                return True
    return False


def _plain_value(ctx: ModuleContext, call: ast.Call, qual: str) -> bool:
    """A tensor or Python value, not a layer: `torch.zeros(...)`, `int(dim)`, `math.sqrt(d)`."""
    if qual:
        return qual.startswith(("torch.", "math.", "numpy.")) and not qual.startswith("torch.nn.")
    return isinstance(call.func, ast.Name) and call.func.id in _BUILTINS


def _builds_attribute(ctx: ModuleContext, call: ast.Call) -> bool:
    """The call's result is stored on `self` (`self.x = f(...)`): it may be a layer."""
    parent = ctx.parents.get(call)
    return isinstance(parent, ast.Assign) and any(
        isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"
        for t in parent.targets
    )


# torch.nn layers whose forward depends on `self.training`, by what they do differently.
_MODE_LAYERS = frozenset(
    {"Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout",
     "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "LazyBatchNorm1d",
     "LazyBatchNorm2d", "LazyBatchNorm3d"}
)  # fmt: skip
MODE_WORDS = ("Dropout", "dropout", "BatchNorm", "batch_norm", ".training")
"""Text a module must contain for one of its classes to have a mode-dependent layer."""


# torchvision's model families built with batch norm or dropout (`vgg16` without `_bn` has
# dropout only in its classifier; `vit_*` and `swin_*` default to no dropout at all).
_ZOO_MODE_FAMILIES = re.compile(
    r"^(resnet|resnext|wide_resnet|densenet|mobilenet|efficientnet|inception|googlenet|"
    r"regnet|shufflenet|mnasnet|alexnet|squeezenet|vgg\d+_bn)"
)


def model_mode_layer(ctx: ModuleContext, model: ast.expr) -> str | None:
    """A layer that acts differently in training mode in what `model` is built as: a local
    class's (`mode_layer`), a `torch.nn` container's item (`nn.Sequential(..., nn.Dropout(0.5))`)
    or a torchvision family known to hold one (`resnet18(...)`, `timm.create_model("resnet50")`:
    `BatchNorm2d`); None when no construction shows one."""
    for call in ctx.flow.constructors(model):
        found = _built_mode_layer(ctx, call, 0)
        if found:
            return found
    return None


def _built_mode_layer(ctx: ModuleContext, call: ast.Call, depth: int) -> str | None:
    if depth > _MAX_DEPTH:
        return None
    name = identifier(call.func)
    if isinstance(call.func, ast.Name) and name in ctx.flow.classes:
        return mode_layer(ctx, ctx.flow.classes[name])
    qual = ctx.flow.qualname_of(call) or ""
    if qual == "timm.create_model" and call.args and isinstance(call.args[0], ast.Constant):
        name = str(call.args[0].value)  # `timm.create_model("resnet50", pretrained=True)`
        qual = "torchvision.models."  # the same families, the same layers
    if qual.startswith("torchvision.models.") and _ZOO_MODE_FAMILIES.match(name):
        return "`Dropout`" if name.startswith(("alexnet", "squeezenet")) else "`BatchNorm2d`"
    if qual.startswith("torch.nn.") and name in _CONTAINERS:
        for part in walk_tree(call):
            if part is call or not isinstance(part, ast.Call):
                continue
            inner = identifier(part.func)
            found = (
                _torch_mode_layer(ctx, part, inner)
                if inner in _MODE_LAYERS
                else _built_mode_layer(ctx, part, depth + 1)
                if isinstance(part.func, ast.Name) and inner in ctx.flow.classes
                else None
            )
            if found:
                return found
    return None


def mode_layer(ctx: ModuleContext, cls: ast.ClassDef) -> str | None:
    """The first layer of a module class (its own, its local bases' or local submodules')
    that is known to act differently in training mode: `Dropout`, `BatchNorm2d`, a
    `F.dropout` call or a `self.training` branch; None when none is seen (a dropout with a
    literal zero probability does nothing)."""
    return _class_mode_layer(ctx, cls, 0)


def _class_mode_layer(ctx: ModuleContext, cls: ast.ClassDef, depth: int) -> str | None:
    memo = ctx.memo_table("mode_layers.class")
    if cls.name in memo:
        return memo[cls.name]  # type: ignore[no-any-return]
    memo[cls.name] = None  # a class building itself (recursion) adds nothing
    found = None if depth > _MAX_DEPTH else _first_mode_layer(ctx, cls, depth)
    memo[cls.name] = found
    return found


def _first_mode_layer(ctx: ModuleContext, cls: ast.ClassDef, depth: int) -> str | None:
    classes = ctx.flow.classes
    local = [b.id for b in cls.bases if isinstance(b, ast.Name) and b.id in classes]
    for node in walk_tree(cls):
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "training"
            and isinstance(node.value, ast.Name)
            and node.value.id == "self"
        ):
            return "a `self.training` branch"
        if isinstance(node, ast.Call):
            name = identifier(node.func)
            if name in classes:
                local.append(name)
            elif name in _MODE_LAYERS or name in _MODE_FUNCTIONS:
                found = _torch_mode_layer(ctx, node, name)
                if found:
                    return found
            elif (
                name in _RECURRENT
                and _recurrent_dropout(node, _RECURRENT[name])
                and (ctx.flow.qualname_of(node) or "").startswith("torch.nn.")
            ):
                return f"`{name}` with dropout between its layers"
    for name in local:
        found = _class_mode_layer(ctx, classes[name], depth + 1)
        if found:
            return found
    return None


def _torch_mode_layer(ctx: ModuleContext, call: ast.Call, name: str) -> str | None:
    """`nn.Dropout(0.1)` -> '`Dropout`'; `F.dropout(x, p)` -> '`F.dropout`'; else None."""
    qual = ctx.flow.qualname_of(call) or ""
    if _zero_probability(call):
        return None
    if qual.startswith("torch.nn.functional."):
        return f"`F.{name}`" if name != "batch_norm" and qual.endswith(f".{name}") else None
    if qual.startswith("torch.nn.") and qual.endswith(f".{name}") and name in _MODE_LAYERS:
        return f"`{name}`"
    return None


def _zero_probability(call: ast.Call) -> bool:
    """`nn.Dropout(0.0)`, `F.dropout(x, p=0)`: a dropout that drops nothing."""
    prob = next((k.value for k in call.keywords if k.arg == "p"), None)
    if prob is None and call.args and isinstance(call.func, ast.Attribute | ast.Name):
        name = call.func.attr if isinstance(call.func, ast.Attribute) else call.func.id
        position = 1 if name.islower() else 0  # F.dropout(x, p) / nn.Dropout(p)
        prob = call.args[position] if len(call.args) > position else None
    return isinstance(prob, ast.Constant) and prob.value in (0, 0.0) and prob.value is not False
