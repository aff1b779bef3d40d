"""eval-loader-drop-last: an evaluation DataLoader that drops its last, incomplete batch."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.held_out import held_out_name_kind
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import kwarg
from torchdoctor.agent.checks.loops import walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_LOADERS = frozenset({"torch.utils.data.DataLoader", "torch.utils.data.dataloader.DataLoader"})


class EvalLoaderDropLast(Rule):
    """Detects a `torch.utils.data.DataLoader` over held-out data built with
    `drop_last=True`: the literal on a loader whose dataset or name says test/validation
    (`DataLoader(test_set, ..., drop_last=True)`), or a `drop_last = True` set in the branch
    of a loader factory that a held-out split takes (`if flag == 'test': drop_last = True`,
    then `DataLoader(data_set, ..., drop_last=drop_last)`: the data factory of Informer,
    Autoformer, FEDformer and their descendants).

    Why it matters: `drop_last` exists so every training step sees a full batch. On
    evaluation it silently discards the last `len(dataset) % batch_size` samples: the
    reported test metric is computed on a subset that depends on the batch size, and results
    are not comparable with other papers or runs (cure-lab/LTSF-Linear `6fe4c28` set the test
    loader's `drop_last` to False after the metrics of a whole line of forecasting papers
    were found to skip the last test windows).

    Also reported: a loader, whatever its name, whose every read hands it to a function of
    the same file that evaluates (named for validation or testing, or switching to eval mode
    or no_grad) and never calls `backward()` or `step()`: a validation script copied from the
    training script keeps `train_loader = DataLoader(..., drop_last=True)` and only passes it
    to `validate_model` (tier4/Diffusion-Planner `df7cad1`). Not when the loader is also
    iterated or handed to a training function or to a function of another file.

    Not reported: training loaders (any loader not named or built for held-out data, the
    `else` branch of a `flag == 'test'` test), held-out loaders with `drop_last=False` or
    none, a branch that also sets a batch size of 1 (nothing to drop), loaders whose
    `drop_last` comes from a parameter or a configuration, loaders under a comment line about
    dropping (a compiled model that needs one batch shape).

    Example:
        if flag == "test":
            shuffle_flag = False
            drop_last = True
        ...
        loader = DataLoader(data_set, batch_size=batch_size, shuffle=shuffle_flag,
                            drop_last=drop_last)

    Fix: `drop_last = False` for every held-out split (keep it for training only).
    """

    id = "eval-loader-drop-last"
    point = 3
    severity = Severity.MEDIUM
    title = "Evaluation DataLoader drops its last batch"
    items: ClassVar[tuple[str, ...]] = ("3.4",)
    triggers = Triggers(all_of=(("drop_last",), ("DataLoader",)))

    def finish(self, ctx: ModuleContext) -> None:
        if "drop_last" not in ctx.source or "DataLoader" not in ctx.source:
            return
        for call in ctx.flow.nodes(ast.Call):
            if ctx.flow.qualname_of(call) not in _LOADERS:
                continue
            drop_last = kwarg(call, "drop_last")
            if _explained(ctx, call):
                continue
            if _is_true(drop_last):
                where = _held_out_loader(ctx, call)
                if where is not None:
                    assert drop_last is not None
                    self._report(ctx, drop_last, where)
            elif isinstance(drop_last, ast.Name):
                for assign, split in _held_out_branch_sets(ctx, call, drop_last.id):
                    self._report(ctx, assign, f"the `{split}` branch of the loader factory")

    def _report(self, ctx: ModuleContext, node: ast.AST, where: str) -> None:
        ctx.report(
            self,
            node,
            f"drop_last=True on a loader of held-out data ({where}): evaluation skips the last "
            "len(dataset) % batch_size samples, so the reported metric covers a subset that "
            "changes with the batch size. Keep drop_last for training loaders only.",
        )


def _explained(ctx: ModuleContext, loader: ast.Call) -> bool:
    """A comment line just above the loader's statement speaks of dropping (`# Drop last to
    ensure all batches are the same size as compiled model expects`): a deliberate choice
    for static shapes, not a copied training setting."""
    lines = ctx.source.splitlines()
    statement = ctx.parents.get(loader)
    first = statement.lineno if isinstance(statement, ast.stmt) else loader.lineno
    for number in range(max(1, first - 2), first):
        line = lines[number - 1].strip()
        if line.startswith("#") and "drop" in line.lower():
            return True
    return False


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _held_out_loader(ctx: ModuleContext, loader: ast.Call) -> str | None:
    """What says `loader` reads held-out data: the name it is bound to (`test_loader =`),
    or its dataset (`DataLoader(val_set, ...)`, a `train=False` torchvision dataset)."""
    statement = ctx.parents.get(loader)
    targets = statement.targets if isinstance(statement, ast.Assign) else []
    for target in targets:
        name = target.id if isinstance(target, ast.Name) else None
        if isinstance(target, ast.Attribute):
            name = target.attr
        if name and "train" in name.lower():
            return _evaluation_only(ctx, target, statement)
        if name and held_out_name_kind(name):
            return f"bound to `{name}`"
    if ctx.flow.held_out_kind(loader) is not None:
        dataset = loader.args[0] if loader.args else kwarg(loader, "dataset")
        return f"dataset `{ast.unparse(dataset)}`" if dataset is not None else "held-out data"
    for target in targets:
        where = _evaluation_only(ctx, target, statement)
        if where:
            return where
    return None


def _evaluation_only(ctx: ModuleContext, target: ast.expr, statement: ast.AST | None) -> str | None:
    if not isinstance(target, ast.Name):
        return None
    evaluator = _read_only_by_an_evaluation(ctx, target.id, statement)
    if not evaluator:
        return None
    return f"`{target.id}` is only given to `{evaluator}`, which never trains"


def _held_out_branch_sets(
    ctx: ModuleContext, loader: ast.Call, name: str
) -> list[tuple[ast.Assign, str]]:
    """`name = True` statements in the body of an `if` of the loader's function whose test
    compares something to a held-out split's name (`if flag == 'test':`, `elif split in
    ('val', 'test'):`), with no batch size of 1 set in the same body."""
    function = ctx.enclosing_function(loader)
    if function is None:
        return []
    found: list[tuple[ast.Assign, str]] = []
    for node in walk_tree(function):
        if not isinstance(node, ast.If) or node.lineno > loader.lineno:
            continue
        split = _held_out_split_test(node.test)
        if split is None or _sets_batch_of_one(node.body):
            continue
        for statement in node.body:
            if (
                isinstance(statement, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == name for t in statement.targets)
                and _is_true(statement.value)
            ):
                found.append((statement, split))
    return found


def _held_out_split_test(test: ast.expr) -> str | None:
    """The held-out split a condition selects (`flag == 'test'`, `mode in ['val', 'test']`);
    None for any other test (`!=`, `not in`, training splits, several conditions)."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return None
    if not isinstance(test.ops[0], ast.Eq | ast.In):
        return None
    values: list[ast.expr] = [test.left, *test.comparators]
    strings: list[str] = []
    for value in values:
        elements = value.elts if isinstance(value, ast.List | ast.Tuple | ast.Set) else [value]
        strings += [
            e.value for e in elements if isinstance(e, ast.Constant) and isinstance(e.value, str)
        ]
    if not strings or any("train" in s.lower() for s in strings):
        return None
    held_out = [s for s in strings if held_out_name_kind(s)]
    return held_out[0] if held_out else None


def _sets_batch_of_one(body: list[ast.stmt]) -> bool:
    return any(
        isinstance(statement, ast.Assign)
        and isinstance(statement.value, ast.Constant)
        and statement.value.value == 1
        and any(isinstance(t, ast.Name) and "batch" in t.id.lower() for t in statement.targets)
        for statement in body
    )


_EVALUATION_WORDS = ("valid", "eval", "test", "predict", "infer")


def _read_only_by_an_evaluation(ctx: ModuleContext, name: str, binding: ast.AST | None) -> str:
    """Every read of the loader's name hands it to a function of this file that evaluates
    (named for validation or testing, or switching to eval mode or no_grad) and never calls
    `backward()` or `step()`: a validation script copied from the training one keeps its
    `train_loader` name (tier4/Diffusion-Planner `df7cad1`). The evaluating function's name,
    or ''."""
    functions = {
        f.name: f for f in ctx.flow.nodes(ast.FunctionDef) if isinstance(f, ast.FunctionDef)
    }
    bound = {id(n) for n in walk_tree(binding) if isinstance(n, ast.Name)} if binding else set()
    evaluator = ""
    for node in ctx.flow.nodes(ast.Name):
        if not isinstance(node, ast.Name) or node.id != name or id(node) in bound:
            continue
        if isinstance(node.ctx, ast.Store):
            return ""  # re-bound: which loader a read sees is not followed
        call = ctx.parents.get(node)
        if isinstance(call, ast.keyword):
            call = ctx.parents.get(call)
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
            return ""
        function = functions.get(call.func.id)
        if function is None or not _evaluates(function):
            return ""
        evaluator = function.name
    return evaluator


def _evaluates(function: ast.FunctionDef) -> bool:
    calls = [n for n in walk_tree(function) if isinstance(n, ast.Call)]
    if any(
        isinstance(c.func, ast.Attribute) and c.func.attr in ("backward", "step") for c in calls
    ):
        return False
    named = any(word in function.name.lower() for word in _EVALUATION_WORDS)
    switches = any(
        isinstance(c.func, ast.Attribute) and c.func.attr in ("eval", "no_grad", "inference_mode")
        for c in calls
    )
    return named or switches
