"""half-model-float-input: a model cast to float16/bfloat16 called with a float32 tensor."""

from __future__ import annotations

import ast
from typing import Any, ClassVar

from torchdoctor.agent.checks.analysis.defuse import identifier, kwarg
from torchdoctor.agent.checks.analysis.project import (
    Pending,
    ProjectIndex,
    defer,
    imported_classes,
)
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.checks.loops import walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_LOW_METHODS = frozenset({"half", "bfloat16"})
_LOW_DTYPES = frozenset({"float16", "half", "bfloat16"})
_FLOAT32_DTYPES = frozenset({"float32", "float", "float64", "double"})
# Tensor methods that keep a value's dtype (device moves, layout, indexing helpers).
_KEEPS_DTYPE = frozenset(
    {"to", "cuda", "cpu", "contiguous", "unsqueeze", "squeeze", "view", "reshape", "permute",
     "detach", "clone", "flatten", "transpose", "requires_grad_", "pin_memory"}
)  # fmt: skip
# Factories that make float32 tensors unless given a dtype.
_FLOAT_FACTORIES = frozenset(
    {"randn", "rand", "zeros", "ones", "empty", "full", "linspace", "normal", "FloatTensor"}
)
_IMAGE_MODEL_PREFIXES = ("torchvision.models.", "timm.create_model", "timm.models.")
_IMAGE_LAYERS = frozenset(
    f"torch.nn.{name}"
    for name in ("Conv2d", "Conv3d", "BatchNorm2d", "BatchNorm3d", "MaxPool2d", "AvgPool2d",
                 "AdaptiveAvgPool2d")
)  # fmt: skip
_MAX_HOPS = 8


class HalfModelFloatInput(Rule):
    """Detects a model converted to half precision (`model.half()`, `.bfloat16()`,
    `.to(torch.float16)`, `.to(dtype=torch.bfloat16)`) that is then called with a tensor the
    code makes float32: a factory without `dtype=` (`torch.randn(1, 3, 224, 224)`), an
    explicit `.float()` or `.to(torch.float32)` / `.type(torch.FloatTensor)`, or a batch of an
    image loader fed to an image model (torchvision or timm models, local networks with 2-D/3-D
    convolutions, norms or pools, classes of another file of the project that build a 2-D
    convolution) or of a loader over a torchvision dataset, or over any
    dataset whose `transform=` ends in `ToTensor()` (and `Normalize`), to any model (a
    diffusion wrapper whose network is in another file: `ToTensor()` made those images
    float32), moved with `.to(device)`/`.cuda()` only; the loader followed into the function
    it is passed to (`train(train_loader, model, ...)`);
    or what a local helper computes from such a tensor (`x = get_mel(wav)` with `wav` a
    `FloatTensor`) when the helper casts nothing.

    Why it matters: the weights are float16 and the input float32; the first layer fails with
    "Input type (float) and bias type (c10::Half) should be the same" (or, on some ops, the
    result silently goes back to float32 and the memory saving is lost).

    Not reported: calls under `torch.autocast(...)` (autocast casts the inputs), inputs cast
    on the way (`x.half()`, `x.to(dtype=...)`, `x.to(model.dtype)`, `x.type(...)`, a dtype
    chosen by a condition: `x.to(torch.float32 if not half else torch.float16)`), datasets
    whose transform is the project's own (what it yields is not seen), integer
    inputs (token ids from a tokenizer or a text loader), models converted back with
    `.float()`, and models whose conversion is not seen.

    Example:
        model = resnet50(weights=weights).cuda().half()
        for images, labels in loader:
            out = model(images.cuda())

    Fix: cast the input to the model's dtype (`images.cuda().half()`) or keep float32 weights
    and run the forward under `torch.autocast("cuda", dtype=torch.float16)`.
    """

    id = "half-model-float-input"
    point = 1
    severity = Severity.HIGH
    title = "Half-precision model fed a float32 input"
    items: ClassVar[tuple[str, ...]] = ("1.5",)
    triggers = Triggers(("half()", "float16"))

    def applies(self, ctx: ModuleContext) -> bool:
        source = ctx.source
        return "half()" in source or "float16" in source or "bfloat16" in source

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        converted = _converted_models(ctx)
        if not converted:
            return
        restored = _restored_models(ctx)
        for call in ctx.flow.nodes(ast.Call):
            model = _model_of(call)
            if model is None or not call.args:
                continue
            name = ast.unparse(model)
            line = converted.get((name, _scope(ctx, call, name)))
            if line is not None and call.lineno <= line:
                continue
            if line is None and isinstance(model, ast.Name):
                line = _converted_by_callers(ctx, model, converted, 0)
            if line is None or name in restored:
                continue
            if not ctx.flow.is_model_call(call) or _under_autocast(ctx, call):
                continue
            image_model = _image_model(ctx, model)
            why = _float32_origin(ctx, call.args[0], image_model, 0)
            if why is None:
                if not image_model:
                    self._defer_to_the_model_file(ctx, call, model, name, line)
                continue
            ctx.report(
                self,
                call,
                f"`{name}` was cast to half precision (line {line}) but receives "
                f"`{ast.unparse(call.args[0])}`, float32 ({why}): cast the input to the model's "
                "dtype or run the forward under torch.autocast",
                data={"converted_line": line},
            )

    def _defer_to_the_model_file(
        self, ctx: ModuleContext, call: ast.Call, model: ast.expr, name: str, line: int
    ) -> None:
        """`unet(x)` with `unet` built from another file's class and `x` a loader's batch:
        pending on that class building a 2-D convolution (an image network)."""
        for symbol in _image_batch_for_another_files_model(ctx, call, model):
            found = ctx.finding(
                self,
                call,
                f"`{name}` was cast to half precision (line {line}) but receives "
                f"`{ast.unparse(call.args[0])}`, float32 (a batch of an image loader fed to "
                f"`{symbol.rpartition('.')[2]}`, an image network): cast the input to the "
                "model's dtype or run the forward under torch.autocast",
                data={"converted_line": line, "model": symbol},
            )
            if found is not None:
                defer(ctx, self.id, Pending(symbol=symbol, needs="convolutional", finding=found))

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        """A loader's batch fed to a half-precision model of another file's class, kept when
        that class is an image network."""
        return ProjectIndex.from_facts(facts).confirmed(facts, cls.id)


def _image_batch_for_another_files_model(
    ctx: ModuleContext, call: ast.Call, model: ast.expr
) -> list[str]:
    """The classes of other files `model` is built from, when `call` feeds it a batch of a
    loader moved with `.to(device)` only: float32 if the class is an image network (the
    project pass asks whether it builds a 2-D convolution)."""
    if _float32_origin(ctx, call.args[0], True, 0) != "a batch of an image loader":
        return []
    return imported_classes(ctx, model)


def _converted_by_callers(
    ctx: ModuleContext, param: ast.Name, converted: dict[tuple[str, int], int], depth: int
) -> int | None:
    """The line where a model given as a parameter was cast to half precision by a caller
    (`simclr_model = simclr_model.to(device).half()` in `__main__`, then
    `get_features(simclr_model, ...)` and `inference(loader, simclr_model, device)`), up to
    three callers up."""
    for argument in ctx.calls.arguments_for(param):
        if not isinstance(argument, ast.Name):
            continue
        line = converted.get((argument.id, _scope(ctx, argument, argument.id)))
        if line is None and depth < 2:
            line = _converted_by_callers(ctx, argument, converted, depth + 1)
        if line is not None:
            return line
    return None


def _model_of(call: ast.Call) -> ast.expr | None:
    """The model a call runs: `model` in `model(x)` and `model.forward(x)`."""
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr == "forward":
        func = func.value
    return func if isinstance(func, ast.Name | ast.Attribute) else None


def _lowers_precision(ctx: ModuleContext, call: ast.Call) -> bool:
    """`.half()`, `.bfloat16()`, `.to(torch.float16)`, `.to(device, dtype=torch.bfloat16)`."""
    func = call.func
    if not isinstance(func, ast.Attribute):
        return False
    if func.attr in _LOW_METHODS and not call.args:
        return True
    if func.attr != "to":
        return False
    dtype = kwarg(call, "dtype")
    candidates = [dtype] if dtype is not None else list(call.args)
    return any(
        (ctx.qualname(arg) or "").rsplit(".", 1)[-1] in _LOW_DTYPES
        and (ctx.qualname(arg) or "").startswith("torch.")
        for arg in candidates
    )


def _chain(expr: ast.expr) -> tuple[ast.expr, list[ast.Call]]:
    """`Net().cuda().half()` -> (`Net()`, [the method calls, outermost first])."""
    calls: list[ast.Call] = []
    while (
        isinstance(expr, ast.Call)
        and isinstance(expr.func, ast.Attribute)
        and expr.func.attr in (*_LOW_METHODS, *_KEEPS_DTYPE, "eval", "train", "float")
    ):
        calls.append(expr)
        expr = expr.func.value
    return expr, calls


def _scope(ctx: ModuleContext, node: ast.AST, name: str) -> int:
    """Where a model name means one thing: its class for `self.*`, else its function."""
    kinds = ast.ClassDef if name.startswith("self.") else ast.FunctionDef | ast.AsyncFunctionDef
    owner = next((a for a in ctx.ancestors(node) if isinstance(a, kinds)), ctx.tree)
    return id(owner)


def _converted_models(ctx: ModuleContext) -> dict[tuple[str, int], int]:
    """(model expression text, its scope) -> the line it was cast to half precision on.

    Either bound to a cast chain (`model = Net().half()`) or cast in place by a statement
    (`model.half()`: a module's `half()` converts it and returns it).
    """
    found: dict[tuple[str, int], int] = {}
    statements: list[ast.Assign | ast.Expr] = [*ctx.flow.nodes(ast.Assign)]
    statements += ctx.flow.nodes(ast.Expr)
    for stmt in statements:
        root, chain = _chain(stmt.value)
        cast = next((c for c in chain if _lowers_precision(ctx, c)), None)
        if cast is None:
            continue
        if isinstance(stmt, ast.Assign):
            if len(stmt.targets) != 1:
                continue
            target = stmt.targets[0]
        else:
            target = root
        if not isinstance(target, ast.Name | ast.Attribute):
            continue
        if not ctx.flow.is_module_value(target) and not ctx.flow.is_module_value(root):
            continue
        name = ast.unparse(target)
        found.setdefault((name, _scope(ctx, stmt, name)), cast.lineno)
    return found


def _restored_models(ctx: ModuleContext) -> set[str]:
    """Models converted back: `model.float()`, `model.to(torch.float32)`."""
    restored: set[str] = set()
    for node in ctx.flow.nodes(ast.Call):
        func = node.func
        if not isinstance(func, ast.Attribute) or not isinstance(
            ctx.parents.get(node), ast.Expr | ast.Assign
        ):
            continue
        to_float = func.attr == "float" or (
            func.attr == "to"
            and any(
                (ctx.qualname(a) or "").rsplit(".", 1)[-1] in _FLOAT32_DTYPES
                for a in [*node.args, *(k.value for k in node.keywords)]
            )
        )
        if to_float:
            restored.add(ast.unparse(func.value))
    return restored


def _under_autocast(ctx: ModuleContext, node: ast.AST) -> bool:
    for anc in ctx.ancestors(node):
        items: list[ast.expr] = []
        if isinstance(anc, ast.With | ast.AsyncWith):
            items = [item.context_expr for item in anc.items]
        elif isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef):
            items = list(anc.decorator_list)
        if any("autocast" in ast.unparse(item) for item in items):
            return True
    return False


def _image_model(ctx: ModuleContext, model: ast.expr) -> bool:
    """The model is an image network: a torchvision/timm model or a local class with image
    layers (2-D/3-D convolutions, batch norms, pools)."""
    for call in ctx.flow.constructors(model):
        root, _ = _chain(call)
        if not isinstance(root, ast.Call):
            continue
        qual = ctx.flow.qualname_of(root) or ""
        if qual.startswith(_IMAGE_MODEL_PREFIXES):
            return True
        cls = ctx.flow.classes.get(identifier(root.func))
        if cls is not None and any(
            isinstance(n, ast.Call) and (ctx.flow.qualname_of(n) or "") in _IMAGE_LAYERS
            for n in walk_tree(cls)
        ):
            return True
    return False


def _float32_origin(ctx: ModuleContext, expr: ast.expr, image_model: bool, hops: int) -> str | None:
    """Why `expr` is a float32 tensor, or None when unknown or cast on the way."""
    if hops > _MAX_HOPS:
        return None
    while isinstance(expr, ast.Subscript | ast.Starred):
        expr = expr.value
    if isinstance(expr, ast.Call):
        func = expr.func
        if isinstance(func, ast.Attribute):
            if func.attr == "float" and not expr.args:
                return "made by `.float()`"
            if _casts_to_float32(ctx, expr):
                return f"cast by `.{func.attr}({ast.unparse(_cast_target(expr))})`"
            if func.attr in _KEEPS_DTYPE and not _casts(expr):
                return _float32_origin(ctx, func.value, image_model, hops + 1)
            if func.attr in _KEEPS_DTYPE or func.attr in ("type", "half", "bfloat16", "long"):
                return None
        qual = ctx.flow.qualname_of(expr) or ""
        if qual.startswith("torch.") and qual.rsplit(".", 1)[-1] in _FLOAT_FACTORIES:
            return None if kwarg(expr, "dtype") is not None else f"`{qual}` without dtype="
        return _computed_by_helper(ctx, expr, image_model, hops)
    if not isinstance(expr, ast.Name):
        return None
    value = _reaching(ctx, expr)
    if value is None:
        return None
    binding = ctx.parents.get(value)
    if isinstance(binding, ast.For | ast.comprehension) and value is binding.iter:
        if image_model and _loader(ctx, value):
            return "a batch of an image loader"
        if _loader(ctx, value, image_dataset=True):
            return "a batch of a loader over a torchvision dataset or a `ToTensor()` transform"
        return None
    return _float32_origin(ctx, value, image_model, hops + 1)


def _computed_by_helper(
    ctx: ModuleContext, call: ast.Call, image_model: bool, hops: int
) -> str | None:
    """A local helper's result computed from a float32 argument (`x = get_mel(wav)` with
    `def get_mel(x): return mel_spectrogram(x, ...)`, `wav` a `FloatTensor`): what a helper
    computes from a float32 tensor stays float32 unless it casts. Not when the helper casts
    anywhere in its body (`.half()`, `.to(dtype=...)`, `.type(...)`) or returns nothing that
    reads the parameter the float32 value is bound to."""
    helpers = ctx.calls.resolve(call)
    if len(helpers) != 1:
        return None
    helper = helpers[0]
    if any(_casting(ctx, node) for node in walk_tree(helper)):
        return None
    returned = [
        node.value
        for node in walk_tree(helper)
        if isinstance(node, ast.Return) and node.value is not None
    ]
    if not returned:
        return None
    for parameter, argument in ctx.calls.bind(call, helper).items():
        if not all(_reads(value, parameter) for value in returned):
            continue
        why = _float32_origin(ctx, argument, image_model, hops + 1)
        if why is not None:
            return f"computed by `{identifier(call.func)}()` from {why}"
    return None


def _casting(ctx: ModuleContext, node: ast.AST) -> bool:
    """A dtype cast: `.half()`, `.bfloat16()`, `.type(...)`, `.to(...)` with a dtype."""
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
        return False
    return node.func.attr in ("half", "bfloat16", "type") or _casts(node)


def _reads(value: ast.expr, name: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == name for n in walk_tree(value))


def _reaching(ctx: ModuleContext, name: ast.Name) -> ast.expr | None:
    """The binding of `name` that reaches its use in straight-line code: the last one on an
    earlier line (`images, labels = images.to(device), ...` after `for images, labels in`)."""
    earlier = [v for v in ctx.flow.definitions(name) if v.lineno < name.lineno]
    if not earlier:
        return None
    last = max(v.lineno for v in earlier)
    latest = [v for v in earlier if v.lineno == last]
    return latest[0] if len(latest) == 1 else None


def _cast_target(call: ast.Call) -> ast.expr:
    """The dtype a `.to(...)`/`.type(...)` names: its `dtype=` keyword, else its last
    positional argument (`x.to(device, torch.float32)`)."""
    dtype = kwarg(call, "dtype")
    if dtype is not None:
        return dtype
    return call.args[-1] if call.args else call.func


def _casts_to_float32(ctx: ModuleContext, call: ast.Call) -> bool:
    """An explicit float32 cast spelled as a conversion: `x.to(torch.float32)`,
    `x.to(device, dtype=torch.float)`, `x.type(torch.FloatTensor)`, `x.type(torch.cuda.
    FloatTensor)`: the value is float32 whatever it was. Not a conditional dtype
    (`x.to(torch.float32 if not half else torch.float16)`) nor a dtype read from a value
    (`x.to(model.dtype)`)."""
    if not isinstance(call.func, ast.Attribute) or call.func.attr not in ("to", "type"):
        return False
    if not call.args and kwarg(call, "dtype") is None:
        return False
    qual = ctx.qualname(_cast_target(call)) or ""
    if not qual.startswith("torch."):
        return False
    return qual.rsplit(".", 1)[-1] in ("float32", "float", "FloatTensor")


def _casts(call: ast.Call) -> bool:
    """`.to(...)` with a dtype: `x.to(device, dtype=...)`, `x.to(model.dtype)`, `x.to(dtype)`."""
    if not isinstance(call.func, ast.Attribute) or call.func.attr != "to":
        return False
    if kwarg(call, "dtype") is not None:
        return True
    return any("dtype" in ast.unparse(a) or "float" in ast.unparse(a) for a in call.args)


def _loader(ctx: ModuleContext, iterable: ast.expr, image_dataset: bool = False) -> bool:
    """`loader`, `enumerate(loader)`, `tqdm(loader)` where `loader` is a DataLoader (with
    `image_dataset`, one over a torchvision dataset), through one name each
    (`pbar = tqdm(dataloader)`, then `for x, _ in pbar`), and through a local function that
    returns one (`loader = data_loader(args)` ending in `return DataLoader(dataset, ...)`)."""
    for _ in range(_MAX_HOPS):
        if isinstance(iterable, ast.Call) and _is_loader_call(ctx, iterable):
            return not image_dataset or _over_torchvision_dataset(ctx, iterable)
        returned = ctx.flow.returns_of(iterable) if isinstance(iterable, ast.Call) else []
        if len(returned) == 1:
            iterable = returned[0]
            continue
        if isinstance(iterable, ast.Call) and iterable.args:
            iterable = iterable.args[0]
            continue
        if not isinstance(iterable, ast.Name | ast.Attribute):
            return False
        bound = [v for v in ctx.flow.definitions(iterable) if isinstance(v, ast.Call)]
        if not bound and isinstance(iterable, ast.Name):
            # a parameter (`def train(train_loader, model, ...)`): what the callers pass
            passed = ctx.calls.arguments_for(iterable)
            return any(_loader(ctx, p, image_dataset) for p in passed)
        if len(bound) != 1:
            return any(_loader(ctx, v, image_dataset) for v in bound if _is_loader_call(ctx, v))
        iterable = bound[0]
    return False


def _is_loader_call(ctx: ModuleContext, call: ast.Call) -> bool:
    return (ctx.flow.qualname_of(call) or "").endswith("DataLoader")


def _over_torchvision_dataset(ctx: ModuleContext, loader: ast.Call) -> bool:
    """`DataLoader(dataset, ...)` with `dataset = CIFAR10(...)` (any `torchvision.datasets`
    class): its images come out of `ToTensor()` as float32, whatever the model."""
    dataset = loader.args[0] if loader.args else kwarg(loader, "dataset")
    if dataset is None:
        return False
    bound = ctx.flow.definitions(dataset) if isinstance(dataset, ast.Name) else [dataset]
    return bool(bound) and all(
        isinstance(v, ast.Call)
        and (
            (ctx.flow.qualname_of(v) or "").startswith("torchvision.datasets.")
            or _to_tensor_transform(ctx, kwarg(v, "transform"))
        )
        for v in bound
    )


def _to_tensor_transform(ctx: ModuleContext, transform: ast.expr | None) -> bool:
    """A dataset's `transform=` that ends in torchvision's `ToTensor()` (itself, or a
    `Compose([...])` whose last step after it only normalises), through names bound in
    branches (`transform_train = Compose([...])` under `if args.augment:` and `else:`):
    whatever the dataset class (`datasets.__dict__[name](root, transform=...)`), its images
    come out float32."""
    if transform is None:
        return False
    values = ctx.flow.definitions(transform) if isinstance(transform, ast.Name) else [transform]
    if not values:
        return False
    for value in values:
        if not isinstance(value, ast.Call):
            return False
        qual = ctx.flow.qualname_of(value) or ""
        if qual.endswith(".ToTensor"):
            continue
        steps = value.args[0] if qual.endswith(".Compose") and value.args else None
        if not isinstance(steps, ast.List | ast.Tuple):
            return False
        names = [
            (ctx.flow.qualname_of(step) or "").rsplit(".", 1)[-1]
            for step in steps.elts
            if isinstance(step, ast.Call)
        ]
        if "ToTensor" not in names or any(
            name not in ("ToTensor", "Normalize")
            for name in names[len(names) - names[::-1].index("ToTensor") :]
        ):
            return False
    return True
