"""normalize-channel-count: a Normalize with one mean per RGB channel on a one-channel dataset."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import identifier, kwarg
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

# torchvision datasets whose images are one-channel (PIL mode "L"), and the position of
# `transform` in their signature when it is passed positionally (None: keyword only).
_ONE_CHANNEL: dict[str, int | None] = {
    "MNIST": 2,
    "FashionMNIST": 2,
    "KMNIST": 2,
    "QMNIST": None,
    "EMNIST": None,
    "USPS": 2,
    "Omniglot": None,
}
# torchvision transforms that keep the number of channels of the image they are given.
_KEEP_CHANNELS = frozenset(
    {
        "ToTensor",
        "PILToTensor",
        "ToImage",
        "ToDtype",
        "ConvertImageDtype",
        "Resize",
        "Scale",
        "CenterCrop",
        "RandomCrop",
        "RandomResizedCrop",
        "RandomSizedCrop",
        "FiveCrop",
        "TenCrop",
        "Pad",
        "RandomHorizontalFlip",
        "RandomVerticalFlip",
        "RandomRotation",
        "RandomAffine",
        "RandomPerspective",
        "ElasticTransform",
        "GaussianBlur",
        "RandomInvert",
        "RandomAutocontrast",
        "RandomEqualize",
        "RandomErasing",
    }
)


class NormalizeChannelCount(Rule):
    """Detects a `transforms.Normalize` given several per-channel means or stds (`mean=(0.5,
    0.5, 0.5)`) in the transform of a torchvision dataset whose images have one channel
    (MNIST, FashionMNIST, KMNIST, QMNIST, EMNIST, USPS, Omniglot), when every transform
    before it keeps the channel count.

    Why it matters: `ToTensor()` gives a (1, H, W) image and Normalize subtracts a (3, 1, 1)
    mean in place, which cannot broadcast: the first batch fails in a loader worker with
    "output with shape [1, 28, 28] doesn't match the broadcast shape [3, 28, 28]".
    yunjey/pytorch-tutorial's MNIST GAN kept the RGB Normalize of another tutorial until
    `dd297a1` (mean=[0.5], std=[0.5]).

    Not reported: one mean and std (it broadcasts over any number of channels), pipelines
    that may change the channel count before Normalize (`Grayscale(num_output_channels=3)`,
    a `Lambda` that repeats the channel, any transform the rule does not know), datasets
    that are not torchvision's (a local `MNISTM` class is coloured), and transforms whose
    definition the module does not show in one place.

    Example:
        transform = transforms.Compose([
            transforms.ToTensor(),
            transforms.Normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        ])
        mnist = torchvision.datasets.MNIST(root="data", train=True, transform=transform)

    Fix: one value per channel the images have (`Normalize(mean=(0.5,), std=(0.5,))`), or
    make the images three-channel first (`transforms.Grayscale(num_output_channels=3)`).
    """

    id = "normalize-channel-count"
    point = 1
    severity = Severity.HIGH
    title = "Normalize with several channel means on a one-channel dataset"
    items: ClassVar[tuple[str, ...]] = ("1.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names = frozenset(_ONE_CHANNEL)
    triggers = Triggers(all_of=(("Normalize",), tuple(_ONE_CHANNEL)))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        qualname = ctx.call_qualname(node) or ""
        name = identifier(node.func)
        if not qualname.startswith("torchvision.datasets.") or name not in _ONE_CHANNEL:
            return
        transform = kwarg(node, "transform")
        position = _ONE_CHANNEL[name]
        if transform is None and position is not None and len(node.args) > position:
            transform = node.args[position]
        steps = _compose_steps(ctx, transform) if transform is not None else None
        if steps is None:
            return
        channels = 1
        for step in steps:
            if not isinstance(step, ast.Call):
                return
            kind = _torchvision_transform(ctx, step)
            if kind == "Normalize":
                counts = [_length(ctx, _argument(step, i, k)) for i, k in ((0, "mean"), (1, "std"))]
                wrong = [c for c in counts if c is not None and c > 1 and c != channels]
                if wrong:
                    ctx.report(
                        self,
                        step,
                        f"Normalize is given {wrong[0]} values per channel, but `{name}` "
                        f"images have {channels} channel{'s' if channels > 1 else ''} here: "
                        f"the in-place normalisation cannot broadcast and the first batch "
                        f"fails; give one value per channel (`mean=(0.5,), std=(0.5,)`)",
                        data={"dataset": name, "channels": channels, "values": wrong[0]},
                    )
                return
            if kind == "Grayscale":
                given = _argument(step, 0, "num_output_channels")
                if given is None:
                    channels = 1
                elif isinstance(given, ast.Constant) and isinstance(given.value, int):
                    channels = given.value
                else:
                    return
            elif kind not in _KEEP_CHANNELS:
                return  # a Lambda, a custom transform: the channel count is unknown from here


def _compose_steps(ctx: ModuleContext, transform: ast.expr) -> list[ast.expr] | None:
    """The list of transforms of `Compose([...])`, given inline or through one binding of a
    name (the list itself may be a name bound once too)."""
    compose = _single_value(ctx, transform)
    if not (
        isinstance(compose, ast.Call)
        and _torchvision_transform(ctx, compose) == "Compose"
        and compose.args
    ):
        return None
    steps = _single_value(ctx, compose.args[0])
    if not isinstance(steps, ast.List | ast.Tuple):
        return None
    if any(isinstance(step, ast.Starred) for step in steps.elts):
        return None
    return list(steps.elts)


def _single_value(ctx: ModuleContext, expr: ast.expr) -> ast.expr | None:
    """`expr`, or the one value a name holds where it is read (None when several may)."""
    if not isinstance(expr, ast.Name):
        return expr
    values = ctx.flow.definitions(expr)
    if len(values) != 1:
        return None
    value = values[0]
    target = ctx.parents.get(value)
    if not (isinstance(target, ast.Assign) and len(target.targets) == 1):
        return None  # `for t in transforms`, `a, b = ...`: not the value itself
    if isinstance(value, ast.List) and _mutated(ctx, expr.id):
        return None  # `steps.append(Lambda(...))` changes the list
    return value


def _mutated(ctx: ModuleContext, name: str) -> bool:
    for read in ctx.flow.reads_of(name):
        parent = ctx.parents.get(read)
        if isinstance(parent, ast.Attribute | ast.Subscript) or isinstance(
            ctx.parents.get(read), ast.AugAssign
        ):
            return True
    return False


def _torchvision_transform(ctx: ModuleContext, call: ast.Call) -> str | None:
    """`Normalize` of `transforms.Normalize(...)` / `T.Normalize(...)` / `v2.Normalize(...)`."""
    qualname = ctx.call_qualname(call) or ""
    if not qualname.startswith("torchvision.transforms."):
        return None
    return qualname.rsplit(".", 1)[-1]


def _argument(call: ast.Call, position: int, name: str) -> ast.expr | None:
    found = kwarg(call, name)
    if found is None and len(call.args) > position:
        found = call.args[position]
    return found


def _length(ctx: ModuleContext, value: ast.expr | None) -> int | None:
    """How many values a literal sequence (or a name bound once to one) holds: `(0.5, 0.5,
    0.5)`, `[0.5] * 3`; None when it is not written out."""
    if value is None:
        return None
    value = _single_value(ctx, value)
    if isinstance(value, ast.Tuple | ast.List):
        if any(isinstance(e, ast.Starred) for e in value.elts):
            return None
        return len(value.elts)
    if isinstance(value, ast.BinOp) and isinstance(value.op, ast.Mult):
        for seq, times in ((value.left, value.right), (value.right, value.left)):
            if isinstance(times, ast.Constant) and isinstance(times.value, int):
                inner = _length(ctx, seq)
                return inner * times.value if inner is not None else None
    return None
