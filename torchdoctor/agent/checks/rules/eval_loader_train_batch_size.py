"""eval-loader-train-batch-size: an evaluation loader given the training batch size."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_EVAL_WORDS = frozenset(
    {"eval", "evaluation", "evaluate", "val", "valid", "validation", "test", "dev", "holdout"}
)
_TRAIN_SIZE = re.compile(r"train[\w.]*?(batch|bs\b|bsize)|(batch|bs)\w*?[._]train\b")
# a separate evaluation batch size the module can name (args.eval_batch_size,
# per_device_eval_batch_size, cfg.TEST.BATCH_SIZE, val_bs)
_EVAL_SIZE = re.compile(
    r"(eval|val|valid|validation|test|dev)\w*?[._](batch_size|batch|bs|bsize)\b"
    r"|batch_size_(eval|val|valid|test)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"[a-z]+")


class EvalLoaderTrainBatchSize(Rule):
    """Detects an evaluation loader or batch sampler (its dataset, the name it is bound to or
    the function building it says eval/val/valid/test/dev) given the training batch size
    (`batch_size=args.train_batch_size`, `self.args.per_device_train_batch_size`,
    `hps.train.batch_size`) in a module that names a separate evaluation batch size
    (`eval_batch_size`, `cfg.TEST.BATCH_SIZE`).

    Why it matters: the evaluation setting exists because evaluation runs without gradients
    and is sized on its own: a larger batch to go fast, a smaller one to fit long sequences
    or several models. A copied loader line that keeps the training value silently ignores
    it: evaluation runs out of memory or crawls, and a metric computed per batch (or with
    `drop_last`) changes with the batch size. UKPLab/sentence-transformers fixed exactly this
    (`02fb5f8`: `get_eval_dataloader` built its sampler with
    `batch_size=self.args.train_batch_size`, now `eval_batch_size`).

    Not reported: training loaders, evaluation loaders given an evaluation or shared size
    (`batch_size=args.batch_size`), modules that name no separate evaluation batch size (one
    `hps.train.batch_size` for every loader is then the project's choice).

    Example:
        train_loader = DataLoader(train_set, batch_size=args.train_batch_size, shuffle=True)
        test_loader = DataLoader(test_set, batch_size=args.train_batch_size)
        ...
        parser.add_argument("--eval_batch_size", type=int, default=64)

    Fix: give the evaluation loader the evaluation size:
    `DataLoader(test_set, batch_size=args.eval_batch_size)`.
    """

    id = "eval-loader-train-batch-size"
    point = 3
    severity = Severity.MEDIUM
    title = "Evaluation loader given the training batch size"
    items: ClassVar[tuple[str, ...]] = ("3.4",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.keyword,)
    triggers = Triggers(all_of=(("train",), ("batch_size",)))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.keyword)
        if node.arg != "batch_size" or not _names_eval_size(ctx):
            return
        size = _dotted(node.value).lower()
        if not size or not _TRAIN_SIZE.search(size) or _eval_named(size):
            return
        call = ctx.parents.get(node)
        if not isinstance(call, ast.Call):
            return
        where = _evaluation_context(ctx, call)
        if where is None:
            return
        ctx.report(
            self,
            node.value,
            f"this loader is for evaluation ({where}) but takes the training batch size "
            f"`{ast.unparse(node.value)}`, while the module has a separate evaluation batch "
            "size: evaluation ignores it (memory, speed, and per-batch metrics change with "
            "it). Pass the evaluation size.",
        )


def _names_eval_size(ctx: ModuleContext) -> bool:
    """The module names a separate evaluation batch size (searched once per module)."""
    memo = ctx.memo_table("eval-loader-train-batch-size")
    if "eval-size" not in memo:
        memo["eval-size"] = bool(_EVAL_SIZE.search(ctx.source))
    return bool(memo["eval-size"])


def _dotted(expr: ast.expr) -> str:
    """`args.train_batch_size`, `cfg['train']['batch_size']` as dotted text; '' otherwise."""
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.Attribute):
        inner = _dotted(expr.value)
        return f"{inner}.{expr.attr}" if inner else ""
    if isinstance(expr, ast.Subscript) and isinstance(expr.slice, ast.Constant):
        inner = _dotted(expr.value)
        key = expr.slice.value
        return f"{inner}.{key}" if inner and isinstance(key, str) else ""
    return ""


def _eval_named(text: str) -> bool:
    return bool(_EVAL_WORDS & set(_WORD.findall(text.lower())))


def _evaluation_context(ctx: ModuleContext, call: ast.Call) -> str | None:
    """What says `call` builds an evaluation loader: its dataset, its target, or its
    function; None when nothing does or something says training."""
    dataset = call.args[0] if call.args else None
    for keyword in call.keywords:
        if keyword.arg in ("dataset", "data", "data_source"):
            dataset = keyword.value
    if dataset is not None:
        text = _dotted(dataset)
        if text and "train" in text.lower():
            return None
        if text and _eval_named(text):
            return f"dataset `{text}`"
    parent = ctx.parents.get(call)
    if isinstance(parent, ast.Assign):
        names = [_dotted(t) for t in parent.targets]
        if any("train" in n.lower() for n in names):
            return None
        for name in names:
            if name and _eval_named(name):
                return f"bound to `{name}`"
    function = ctx.enclosing_function(call)
    if (
        function is not None
        and "train" not in function.name.lower()
        and _eval_named(function.name.replace("_", " "))
    ):
        return f"built in `{function.name}`"
    return None
