"""random-aug-on-eval: random augmentations applied to validation or test data."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.analysis.held_out import held_out_name_kind
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import identifier, kwarg
from torchdoctor.agent.models import Severity

_RANDOM_OPS = re.compile(
    r"^(Random\w+|ColorJitter|RandAugment|AutoAugment|TrivialAugmentWide|AugMix|ElasticTransform)$"
)
_EVAL_TRANSFORM_NAME = re.compile(
    r"(^|_)(val|valid|validation|test|eval|inference)_?(transforms?|tfms?|tf|aug\w*|preprocess\w*)$",
    re.IGNORECASE,
)
_HELD_OUT = frozenset({"test", "val"})
_TORCHVISION_DATASETS = "torchvision.datasets."


class RandomAugOnEval(Rule):
    """Detects random augmentations (`RandomCrop`, `RandomHorizontalFlip`, `ColorJitter`,
    `RandAugment`, ...) in the transform of a validation/test dataset (one built with
    `train=False`, `split="val"`, or bound to a held-out name), or in a transform variable
    named like `val_transform`/`test_transforms`, followed through variables and `Compose`;
    a torchvision dataset's transform given positionally counts (`ImageFolder(valdir,
    transforms.Compose([...]))`), and so do random ops appended to the transform after it is
    built (`tf.transforms.append(transforms.RandomCrop(32, padding=4))` on `tf =
    transforms.Compose([])`, `ops.append(...)` on the list a `Compose(ops)` wraps).

    Not reported: held-out data given a transform whose appended ops are all deterministic,
    a random op appended to another transform, or the entry of a dict of transforms keyed by
    split that holds none (`transform=data_transforms["test"]` while the random ops are under
    the "train" key; `{x: ImageFolder(root, data_transforms[x]) for x in ["train", "val"]}`,
    each split given its own entry), and what other cells of a notebook bind to the same
    names: a pipeline bound again before the dataset is built (`transform = ...` with no
    random op, after an augmenting `transform` of an earlier cell) is the one it gets, and a
    training dataset whose name another cell rebinds to a subset of a `train_and_valid` pool
    is still one.

    Why it matters: evaluation metrics become random (two runs of the same checkpoint
    disagree), are biased low, and are not comparable with published numbers that use a
    deterministic resize/center-crop.

    Example:
        test_set = CIFAR10(root, train=False, transform=T.Compose([T.RandomCrop(32, 4),
                                                                    T.ToTensor()]))

    Fix: give held-out data a deterministic transform (`Resize` + `CenterCrop` +
    `ToTensor` + `Normalize`); keep random ops for the training set.
    """

    id = "random-aug-on-eval"
    point = 3
    severity = Severity.MEDIUM
    title = "Random augmentation on evaluation data"
    items: ClassVar[tuple[str, ...]] = ("3.4",)

    def applies(self, ctx: ModuleContext) -> bool:
        return ctx.flow.imports("torchvision", "albumentations")

    def finish(self, ctx: ModuleContext) -> None:
        if (
            "Random" not in ctx.source
            and "Jitter" not in ctx.source
            and "Augment" not in (ctx.source)
        ):
            return
        flow = ctx.flow
        reported: set[int] = set()
        for node in flow.nodes(ast.Assign):
            if any(_EVAL_TRANSFORM_NAME.search(identifier(t)) for t in node.targets):
                self._check(ctx, node, node.value, reported)
        for call in flow.nodes(ast.Call):
            transforms = _transform_arguments(ctx, call)
            if not transforms or not self._held_out_dataset(ctx, call):
                continue
            for transform in transforms:
                self._check(ctx, call, transform, reported)

    def _held_out_dataset(self, ctx: ModuleContext, call: ast.Call) -> bool:
        if ctx.flow.held_out_kind(call, _HELD_OUT) is not None:
            return True
        parent = ctx.parents.get(call)
        # the name this call's dataset is bound to says what it is; other bindings of the
        # same name (a notebook cell that rebinds `train_dataset` to a subset of a
        # `train_and_valid` pool) say nothing of this one
        return isinstance(parent, ast.Assign) and any(
            held_out_name_kind(identifier(t)) in _HELD_OUT
            for t in parent.targets
            if isinstance(t, ast.Name | ast.Attribute)
        )

    def _check(
        self, ctx: ModuleContext, node: ast.AST, transform: ast.expr, seen: set[int]
    ) -> None:
        op: ast.AST | None = None
        for entry in _table_entries(ctx, transform):
            built = entry
            if isinstance(entry, ast.Name) and (reached := ctx.flow.reaching(entry)):
                built = reached  # the pipeline bound last before this cell, not an earlier one
            op = ctx.flow.sources_include(built, _is_random_op)
            if not isinstance(op, ast.Call):
                op = _appended_random_op(ctx, entry)
            if isinstance(op, ast.Call):
                break
        if not isinstance(op, ast.Call) or id(op) in seen:
            return
        seen.add(id(op))
        ctx.report(
            self,
            node,
            f"evaluation data gets the random augmentation `{ast.unparse(op.func)}` "
            f"(line {op.lineno}): metrics become noisy and biased",
            data={"augmentation_line": op.lineno},
        )


def _table_entries(ctx: ModuleContext, transform: ast.expr) -> list[ast.expr]:
    """The pipelines a held-out dataset may get from a dict literal of transforms keyed by
    split: `data_transforms["test"]`, that entry alone (the "train" entry's random ops are not
    the test set's); `data_transforms[x]` in `{x: ImageFolder(..., data_transforms[x]) for x
    in ["train", "val"]}` (the transfer-learning tutorial's idiom), the entries of the
    held-out keys of the loop, each split getting its own. The expression itself when the
    table or the key is not known."""
    if not (isinstance(transform, ast.Subscript) and isinstance(transform.value, ast.Name)):
        return [transform]
    key = transform.slice
    if isinstance(key, ast.Constant):
        keys = [key.value]
    elif isinstance(key, ast.Name) and (looped := _looped_split_names(ctx, key)) is not None:
        keys = [k for k in looped if held_out_name_kind(k) is not None]
    else:
        return [transform]
    entries: list[ast.expr] = []
    for table in ctx.flow.definitions(transform.value):
        if not isinstance(table, ast.Dict) or any(k is None for k in table.keys):
            return [transform]  # not a literal table, or a `**` may bring the key
        for wanted in keys:
            found = [
                v
                for k, v in zip(table.keys, table.values, strict=True)
                if isinstance(k, ast.Constant) and k.value == wanted
            ]
            if len(found) != 1:
                return [transform]  # the key is missing or repeated
            entries += found
    return entries if entries or keys == [] else [transform]


def _looped_split_names(ctx: ModuleContext, name: ast.Name) -> list[str] | None:
    """The strings a comprehension (or `for`) around `name` binds it to (`for x in ["train",
    "val", "test"]`); None when `name` is not bound so."""
    for anc in ctx.ancestors(name):
        generators = (
            anc.generators
            if isinstance(anc, ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp)
            else [anc]
            if isinstance(anc, ast.For)
            else []
        )
        for gen in generators:
            if isinstance(gen.target, ast.Name) and gen.target.id == name.id:
                items = gen.iter.elts if isinstance(gen.iter, ast.List | ast.Tuple) else None
                if items is None or not all(
                    isinstance(i, ast.Constant) and isinstance(i.value, str) for i in items
                ):
                    return None
                return [str(i.value) for i in items if isinstance(i, ast.Constant)]
        if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef):
            return None
    return None


def _transform_arguments(ctx: ModuleContext, call: ast.Call) -> list[ast.expr]:
    """The transform a dataset is built with: `transform=`/`transforms=`, or, for a
    torchvision dataset, a positional argument after the root (`ImageFolder(valdir,
    transforms.Compose([...]))`, `CIFAR10(root, False, tf)`)."""
    named = kwarg(call, "transform") or kwarg(call, "transforms")
    if named is not None:
        return [named]
    if (ctx.flow.qualname_of(call) or "").startswith(_TORCHVISION_DATASETS):
        return list(call.args[1:])
    return []


_GROWERS = frozenset({"append", "insert", "extend"})


def _appended_random_op(ctx: ModuleContext, transform: ast.expr) -> ast.AST | None:
    """A random op appended to the transform after it is built: `tf.transforms.append(
    transforms.RandomCrop(32, padding=4))` on `tf = transforms.Compose([])` (Cutout's
    `train_transform`), or `ops.append(RandomFlip())` on the list a `Compose(ops)` wraps."""
    grown: set[str] = set()
    built: list[ast.expr] = [transform]
    if isinstance(transform, ast.Name):
        grown |= {transform.id, f"{transform.id}.transforms"}
        built += ctx.flow.definitions(transform)
    for value in built:
        if isinstance(value, ast.Call):
            grown |= {a.id for a in value.args if isinstance(a, ast.Name)}
    if not grown:
        return None
    for call in ctx.flow.nodes(ast.Call):
        func = call.func if isinstance(call, ast.Call) else None
        if not (
            isinstance(func, ast.Attribute)
            and func.attr in _GROWERS
            and ast.unparse(func.value) in grown
        ):
            continue
        for arg in call.args:
            op = ctx.flow.sources_include(arg, _is_random_op)
            if isinstance(op, ast.Call):
                return op
    return None


def _is_random_op(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and bool(_RANDOM_OPS.match(identifier(node.func)))
