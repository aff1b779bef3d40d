"""lr-schedule-compounds: a step-indexed learning rate computed from the group's current rate."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_scope
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_COUNTER = re.compile(
    r"^(?:cur_|current_|global_|train_)?(?:it|itr|iter|iteration|step|epoch|iter_num)"
    r"(?:_idx|_num|_id)?$"
)
"""A step or epoch counter (`it`, `iter_num`, `global_step`, `epoch`), not a total
(`max_iters`, `num_epochs`, `warmup_steps`)."""


class LrScheduleCompounds(Rule):
    """Detects a learning rate written into a param group (`param_group["lr"] = v`) where `v`
    is computed from a group's current rate (`optimizer.param_groups[0]["lr"]`, the loop's
    `param_group["lr"]`) together with a step or epoch counter (`it`, `iter_num`,
    `global_step`, `epoch`), directly or through a name bound in the same function:
    `lr = get_lr(optimizer.param_groups[0]["lr"], state["iter_num"], ...)`, `g["lr"] =
    g["lr"] * (0.1 ** (epoch // 30))`.

    Why it matters: a schedule indexed by the step gives the rate at that step from a base
    rate; fed the rate it wrote at the previous step, it compounds: warm-up multiplies
    `it / warmup` factors together (the rate collapses towards zero), a step decay applies
    every earlier decay again. litgpt's `pretrain.fit` read the base from
    `param_groups[0]["lr"]` until `66a797a` (`optimizer.defaults["lr"]`).

    Not reported: a constant factor with no counter (`g["lr"] *= 0.5`, a decay on plateau
    meant to compound), a counter that only decides whether to decay (`if epoch in
    milestones: g["lr"] *= gamma`), a base kept elsewhere (`g["initial_lr"]`,
    `optimizer.defaults["lr"]`, `args.lr`), and totals (`max_iters`, `num_epochs`).

    Example:
        lr = get_lr(optimizer.param_groups[0]["lr"], it, warmup_iters, max_iters, min_lr)
        for param_group in optimizer.param_groups:
            param_group["lr"] = lr

    Fix: compute from the base rate: `get_lr(optimizer.defaults["lr"], it, ...)`, or keep
    `base_lr` from the configuration.
    """

    id = "lr-schedule-compounds"
    point = 4
    severity = Severity.HIGH
    title = "Step-indexed learning rate computed from the current rate"
    items: ClassVar[tuple[str, ...]] = ("4.3",)
    triggers = Triggers(all_of=(("param_group",), ("lr",)))

    def finish(self, ctx: ModuleContext) -> None:
        for node in ctx.flow.nodes(ast.Assign):
            if len(node.targets) != 1 or not _lr_entry(node.targets[0]):
                continue
            fn = ctx.enclosing_function(node)
            body = fn.body if fn is not None else ctx.tree.body
            value = node.value
            sources = [value]
            if isinstance(value, ast.Name):
                sources = _bound_before(body, value.id, node.lineno)
            groups = _group_names(body)
            for source in sources:
                current = _reads_current_lr(source, groups)
                counter = _counter_in(source)
                if current is None or counter is None:
                    continue
                ctx.report(
                    self,
                    source if source is not value else node,
                    f"the rate written into `{ast.unparse(node.targets[0])}` (line "
                    f"{node.lineno}) comes from `{current}`, the rate the previous "
                    f"step wrote, and the counter `{counter}`: a step-indexed schedule fed "
                    "its own output compounds (warm-up factors multiply, decays repeat); "
                    "compute it from the base rate (`optimizer.defaults['lr']`, the "
                    "configured lr)",
                    data={"current": current, "counter": counter},
                )
                break


def _lr_entry(target: ast.AST) -> bool:
    return (
        isinstance(target, ast.Subscript)
        and isinstance(target.slice, ast.Constant)
        and target.slice.value == "lr"
    )


def _bound_before(body: list[ast.stmt], name: str, line: int) -> list[ast.expr]:
    values = []
    for node in walk_scope(body):
        if (
            isinstance(node, ast.Assign)
            and getattr(node, "lineno", line) < line
            and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
        ):
            values.append(node.value)
    return values


def _group_names(body: list[ast.stmt]) -> set[str]:
    """Names a `for` loop binds to the items of `....param_groups`."""
    return {
        node.target.id
        for node in walk_scope(body)
        if isinstance(node, ast.For)
        and isinstance(node.target, ast.Name)
        and "param_groups" in ast.unparse(node.iter)
    }


def _reads_current_lr(value: ast.expr, groups: set[str]) -> str | None:
    """`optimizer.param_groups[0]["lr"]`, `param_group["lr"]`, `g["lr"]` (`g` a loop
    variable over `param_groups`) inside `value`; not `config["lr"]`."""
    for node in _value_parts(value):
        if _lr_entry(node):
            assert isinstance(node, ast.Subscript)
            holder = node.value
            if "param_group" in ast.unparse(holder) or (
                isinstance(holder, ast.Name) and holder.id in groups
            ):
                return ast.unparse(node)
    return None


def _counter_in(value: ast.expr) -> str | None:
    for node in _value_parts(value):
        if isinstance(node, ast.Name) and _COUNTER.match(node.id):
            return node.id
        if isinstance(node, ast.Attribute) and _COUNTER.match(node.attr):
            return ast.unparse(node)
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
            and _COUNTER.match(node.slice.value)
        ):
            return ast.unparse(node)
    return None


def _value_parts(value: ast.expr) -> list[ast.AST]:
    """The nodes of `value`, leaving out the tests of conditional expressions (a counter
    that decides whether to decay)."""
    parts: list[ast.AST] = []
    todo: list[ast.AST] = [value]
    while todo:
        node = todo.pop()
        parts.append(node)
        if isinstance(node, ast.IfExp):
            todo.extend((node.body, node.orelse))
        elif isinstance(node, ast.Lambda):
            continue
        else:
            todo.extend(ast.iter_child_nodes(node))
    return parts
