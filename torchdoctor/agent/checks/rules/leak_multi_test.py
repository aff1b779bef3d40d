"""leak-multi-test: the test set drives model selection (early stopping, best checkpoint)."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.analysis.held_out import held_out_name_kind
from torchdoctor.agent.checks.analysis.vocabulary import VALIDATION_SPLITS, alternation
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import identifier
from torchdoctor.agent.checks.loops import walk_scope, walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_TEST = frozenset({"test"})
_ORDERING = (ast.Gt, ast.GtE, ast.Lt, ast.LtE)
_SELECTION_NAME = re.compile(r"best|patience|stop|bad_epochs", re.IGNORECASE)
_SCHEDULER_NAME = re.compile(r"sched|plateau|lr_", re.IGNORECASE)
_EARLY_STOP = re.compile(r"early_?stop", re.IGNORECASE)
_SAVE_CALLS = frozenset({"save", "state_dict", "deepcopy", "copy", "save_checkpoint"})
_DECISION_WORDS = ("best", "patience", "early", "sched", "plateau", "objective", "save", "stop")


class LeakMultiTest(Rule):
    """Detects the test split used to make training decisions: a comparison with a
    test-derived metric that saves a checkpoint, records a "best" value or stops training
    (`if test_acc > best_acc:`, or through a flag: `improved = metrics["test"] >
    best["test"]` then `if improved:`), `best = max(best, test_acc)`, `scheduler.step(test_loss)`,
    an early-stopping object fed a test metric (named so, or built with a patience:
    `progress = zero.ProgressTracker(patience)` then `progress.update(metrics[TEST])`), or a
    hyper-parameter `objective(trial)` that returns one. Test-derived means computed from data
    named or built as the test split (`test_loader`, `train=False`, the test half of
    `train_test_split`, a `metrics[lib.TEST]` entry), through variables,
    loops and local functions; also a metric named for validation that a call given the
    test split returns (`val_loss = evaluate(Data, Data.test[0], Data.test[1], model)`: the
    data says what it measures). A test evaluation used only for the final report is fine, and
    so is a loop's counter compared to a bound taken from the test set's size (`if batch_idx
    >= ood_num_examples // batch_size: break`), and a metric a helper computes from the split
    its call names (`val_acc = test_model(net, val_loader)`: the helper's name and its local
    `test_acc` say nothing of the data it is given).

    Why it matters: every decision taken on the test set fits the model to it; the final
    test score is then optimistically biased and no longer an unbiased estimate (Yang et al.,
    ASE'22, "multi-test leakage").

    Example:
        test_acc = evaluate(model, test_loader)
        if test_acc > best_acc:
            best_acc = test_acc
            torch.save(model.state_dict(), "best.pt")

    Fix: carve a validation split out of the training data and select on it; touch the test
    set once, at the end.
    """

    id = "leak-multi-test"
    point = 3
    severity = Severity.MEDIUM
    title = "Test set used for model selection"
    items: ClassVar[tuple[str, ...]] = ("3.1",)
    triggers = Triggers(lowered=("test", "holdout"))

    def applies(self, ctx: ModuleContext) -> bool:
        return "test" in ctx.source.lower()

    def finish(self, ctx: ModuleContext) -> None:
        text = ctx.source.lower()
        if "test" not in text and "holdout" not in text:
            return
        if not any(word in text for word in _DECISION_WORDS):
            return
        flow = ctx.flow
        ordered = _ordering_tests(ctx)
        for branch in flow.nodes(ast.If):
            if id(branch) not in ordered:
                continue
            metric = self._selection_metric(ctx, branch)
            if metric is not None:
                self._report(ctx, branch.test, metric, "selects a model on it")
        calls = [*flow.calls_named(("step", "update", "check")), *flow.calls_matching(_EARLY_STOP)]
        for call in calls:
            self._check_call(ctx, call)
        for node in flow.nodes(ast.Assign):
            if isinstance(node.value, ast.Call):
                call = node.value
                if identifier(call.func) in ("max", "min") and any(
                    _SELECTION_NAME.search(identifier(t)) for t in node.targets
                ):
                    for arg in call.args:
                        if flow.held_out_kind(arg, _TEST):
                            self._report(ctx, node, arg, "keeps the best value of it")
                            break
        for fn in flow.functions.get("objective", []):
            for ret in walk_scope(fn.body):
                if (
                    isinstance(ret, ast.Return)
                    and ret.value is not None
                    and flow.held_out_kind(ret.value, _TEST)
                ):
                    self._report(ctx, ret, ret.value, "tunes hyper-parameters on it")

    def _selection_metric(self, ctx: ModuleContext, node: ast.If) -> ast.expr | None:
        tested: list[ast.expr] = [node.test]
        for name in walk_tree(node.test):  # a flag bound to the comparison: its definition
            if isinstance(name, ast.Name):
                tested += [d for d in ctx.flow.definitions(name) if isinstance(d, ast.Compare)]
        compares = [
            c
            for t in tested
            for c in walk_tree(t)
            if isinstance(c, ast.Compare) and any(isinstance(op, _ORDERING) for op in c.ops)
        ]
        if not compares:
            return None
        selects = any(
            (isinstance(n, ast.Break))
            or (isinstance(n, ast.Call) and identifier(n.func) in _SAVE_CALLS)
            or (
                isinstance(n, ast.Assign | ast.AugAssign)
                and any(
                    _SELECTION_NAME.search(identifier(t))
                    for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
                )
            )
            for n in walk_scope(node.body)
        )
        if not selects:
            return None
        counters = _loop_counters(ctx, node)
        for compare in compares:
            operands = [compare.left, *compare.comparators]
            if any(
                isinstance(n, ast.Name) and n.id in counters for o in operands for n in walk_tree(o)
            ):
                continue  # `if batch_size * i >= n_examples: break`: a loop's bound
            for operand in operands:
                if ctx.flow.held_out_kind(operand, _TEST) or _computed_from_test(ctx, operand):
                    return operand
        return None

    def _check_call(self, ctx: ModuleContext, call: ast.Call) -> None:
        func = call.func
        flow = ctx.flow
        is_scheduler = (
            isinstance(func, ast.Attribute)
            and func.attr == "step"
            and bool(_SCHEDULER_NAME.search(identifier(func.value)))
        )
        tracker = not is_scheduler and _patience_tracker(ctx, func)
        if not is_scheduler and not tracker and not _EARLY_STOP.search(identifier(func)):
            return
        for arg in [*call.args, *(k.value for k in call.keywords)]:
            data_like = isinstance(arg, ast.Name | ast.Attribute | ast.Call | ast.Subscript)
            if data_like and flow.held_out_kind(arg, _TEST):
                purpose = "adapts the learning rate" if is_scheduler else "stops training"
                self._report(ctx, call, arg, f"{purpose} on it")
                return

    def _report(self, ctx: ModuleContext, node: ast.AST, metric: ast.expr, what: str) -> None:
        if _in_validation_branch(ctx, node):
            return
        ctx.report(
            self,
            node,
            f"`{ast.unparse(metric)}` comes from the test split and the code {what}: the final "
            "test score is no longer an unbiased estimate",
            data={"metric": ast.unparse(metric)},
        )


_VALIDATION = re.compile(rf"^(?:is_)?(?:{alternation(VALIDATION_SPLITS)}|validate)$", re.IGNORECASE)


def _patience_tracker(ctx: ModuleContext, func: ast.expr) -> bool:
    """`progress.update(score)` where `progress` was built with a patience
    (`zero.ProgressTracker(args["training"]["patience"])`, `EarlyStopper(patience=5)`): an
    early-stopping object, whatever its name, fed the metric it stops and selects on."""
    if not (isinstance(func, ast.Attribute) and func.attr in ("update", "step", "check")):
        return False
    return any(
        "patience" in ast.unparse(arg).lower()
        for built in ctx.flow.constructors(func.value)
        for arg in [*built.args, *(k.value for k in built.keywords)]
    ) or any(
        k.arg is not None and "patience" in k.arg.lower()
        for built in ctx.flow.constructors(func.value)
        for k in built.keywords
    )


def _computed_from_test(ctx: ModuleContext, operand: ast.expr) -> bool:
    """A name every binding of which is the result of a call handed the test split
    (`val_loss, val_rae, val_corr = evaluate(Data, Data.test[0], Data.test[1], model, ...)`):
    the data says what the metric measures, whatever the name says."""
    if not isinstance(operand, ast.Name):
        return False
    values = ctx.flow.reaching_or_all(operand)
    return bool(values) and all(
        isinstance(v, ast.Call)
        and any(_names_test_data(a) for a in [*v.args, *(k.value for k in v.keywords)])
        for v in values
    )


def _names_test_data(arg: ast.expr) -> bool:
    """The argument's own names say it is the test split (`test_loader`, `Data.test[0]`,
    `X_test`): not a model or a loss that the analysis links to test data elsewhere."""
    names = [
        n.id if isinstance(n, ast.Name) else n.attr
        for n in walk_tree(arg)
        if isinstance(n, ast.Name | ast.Attribute)
    ]
    return any(held_out_name_kind(name) == "test" for name in names)


def _in_validation_branch(ctx: ModuleContext, node: ast.AST) -> bool:
    """Whether `node` runs only in a branch taken for the validation split (`elif phase ==
    LoopPhase.VAL:`, `if split == "val":`, `if is_val:`): one loop function serving every
    split (a GAT trainer's `main_loop(phase)`) gets its metric from the test split in another
    branch only, so the selection here is on validation data."""
    child: ast.AST = node
    for anc in ctx.ancestors(node):
        if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return False
        if isinstance(anc, ast.If) and child in anc.body and _names_validation(anc.test):
            return True
        child = anc
    return False


def _names_validation(test: ast.expr) -> bool:
    """A test that holds for the validation split alone: an equality with a validation name
    (`phase == Phase.VAL`, `"val" == split`, `mode in ("val", "valid")`), or a flag so named."""
    if isinstance(test, ast.Name | ast.Attribute):
        return bool(_VALIDATION.match(identifier(test).rsplit(".", 1)[-1]))
    if not isinstance(test, ast.Compare) or len(test.ops) != 1:
        return False
    if not isinstance(test.ops[0], ast.Eq | ast.Is | ast.In):
        return False
    return any(_validation_value(side) for side in (test.left, test.comparators[0]))


def _validation_value(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return bool(_VALIDATION.match(node.value))
    if isinstance(node, ast.Attribute):
        return bool(_VALIDATION.match(node.attr))
    if isinstance(node, ast.Tuple | ast.List | ast.Set) and node.elts:
        return all(_validation_value(e) for e in node.elts)
    return False


def _loop_counters(ctx: ModuleContext, node: ast.AST) -> set[str]:
    """The names the `for` loops around `node` bind, in its function: batch and step
    indices that an `if` compares to a bound to stop early."""
    names: set[str] = set()
    for anc in ctx.ancestors(node):
        if isinstance(anc, ast.For | ast.AsyncFor):
            names |= {n.id for n in walk_tree(anc.target) if isinstance(n, ast.Name)}
        elif isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            break
    return names


def _ordering_tests(ctx: ModuleContext) -> set[int]:
    """The `if` statements whose test holds an ordering comparison (`acc > best`), found
    from the module's comparisons up, not by walking every test."""
    found: set[int] = set()
    flags: set[str] = set()
    parents = ctx.parents
    for compare in ctx.nodes_by_type().get(ast.Compare, ()):
        if not isinstance(compare, ast.Compare):
            continue
        if not any(isinstance(op, _ORDERING) for op in compare.ops):
            continue
        child: ast.AST = compare
        parent = parents.get(compare)
        while parent is not None and not isinstance(parent, ast.stmt):
            child, parent = parent, parents.get(parent)
        if isinstance(parent, ast.If) and parent.test is child:
            found.add(id(parent))
        elif (
            isinstance(parent, ast.Assign)
            and parent.value is child
            and len(parent.targets) == 1
            and isinstance(parent.targets[0], ast.Name)
        ):
            flags.add(parent.targets[0].id)
    if flags:  # `improved = metrics["val"] > best["val"]` then `if improved:` (tabm's loop)
        for branch in ctx.nodes_by_type().get(ast.If, ()):
            if isinstance(branch, ast.If) and any(
                isinstance(n, ast.Name) and n.id in flags for n in walk_tree(branch.test)
            ):
                found.add(id(branch))
    return found
