"""alias-mutated-in-place: `a = b` then an in-place op on one changes the other too."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_scope
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import inplace_write
from torchdoctor.agent.models import Severity


class AliasMutatedInPlace(Rule):
    """Detects a tensor kept under a second name (`saved = scores`, a plain assignment, no
    `.clone()`) followed by an in-place method (`masked_fill_`, `mul_`, `add_`, ...) on one
    of the two names, when the other is read afterwards, or when the alias is the one written
    and the original lives on (an optimizer state entry, an attribute: `d_p = buf` where
    `buf = state['momentum_buffer']`). An indexed assignment (`target[idx, a] = r`) is a
    write too when the aliased value is a model output or a loss (the DQN target built as
    `q_target = q_pred` and then filled in, so the loss compares a tensor with itself).

    Why it matters: assignment does not copy a tensor, both names share its storage. The
    in-place write changes the value kept for later: an intermediate saved "before masking"
    holds the masked values, or an update mutates the momentum buffer it was read from, and
    the next step starts from a corrupted state. Nothing fails.

    Also reported: an alias of a parameter annotated as a tensor (`x_cont: torch.Tensor`)
    written in place through the alias (`input_vector = x_cont`, then `input_vector[...,
    targets] = torch.roll(...)`): the caller's tensor changes, so a batch reused after the
    call (the next autoregressive step, a loss on the inputs) reads shifted values.
    jdb78/pytorch-forecasting fixed exactly this in DeepAR and its RNN model (`82f738c`:
    `input_vector = x_cont` -> `x_cont.clone()`).

    Not reported: `.clone()`d copies, aliases rebound before the write, a write in the
    other branch of the alias's `if` (`if last: kept = f_hat` / `else: f_hat.add_(h)`),
    in-place writes on
    the original name when the alias is never read again, flag setters (`requires_grad_`),
    and indexed assignments into an alias of anything but a graph tensor (a list, a dict, a
    NumPy array or a plain tensor shared on purpose).

    Example:
        pre_mask = scores
        scores.masked_fill_(~mask, float("-inf"))
        return scores.softmax(-1), pre_mask

    Fix: `pre_mask = scores.clone()` (or write out of place: `scores = scores.masked_fill(...)`).
    """

    id = "alias-mutated-in-place"
    point = 1
    severity = Severity.MEDIUM
    title = "Tensor alias changed by an in-place operation"
    items: ClassVar[tuple[str, ...]] = ("1.1",)
    triggers = Triggers(("_(", "] ="))

    def applies(self, ctx: ModuleContext) -> bool:
        return "_(" in ctx.source or "] =" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        # only functions that hold a plain `a = b` are walked (few do)
        holders: dict[int, ast.FunctionDef] = {}
        paired: dict[int, set[str]] = {}  # the names of each holder's alias pairs
        for assign in ctx.flow.nodes(ast.Assign):
            target = assign.targets[0]
            if (
                len(assign.targets) == 1
                and isinstance(target, ast.Name)
                and isinstance(assign.value, ast.Name)
            ):
                fn = ctx.enclosing_function(assign)
                if isinstance(fn, ast.FunctionDef):
                    holders.setdefault(id(fn), fn)
                    paired.setdefault(id(fn), set()).update((target.id, assign.value.id))
        if not holders:
            return
        # and of those, only the ones where a name of a pair is written in place somewhere in
        # the module (a finding needs such a write in the function): few are
        written = _written_names(ctx)
        for key, fn in holders.items():
            if not paired[key].isdisjoint(written):
                self._check_function(ctx, fn)

    def _check_function(self, ctx: ModuleContext, fn: ast.FunctionDef) -> None:
        nodes = list(walk_scope(fn.body))
        persistent: set[str] = set()
        writes: list[tuple[str, int, ast.AST]] = []
        indexed: set[tuple[str, int]] = set()  # `name[...] = value`: a write on a tensor only
        aliases: list[ast.Assign] = []
        traced: set[str] = set()  # the names of alias pairs
        for node in nodes:
            if isinstance(node, ast.Assign | ast.AugAssign):
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
                        writes.append((target.value.id, node.lineno, node))
                        indexed.add((target.value.id, node.lineno))
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                if isinstance(target, ast.Name) and isinstance(node.value, ast.Name):
                    aliases.append(node)
                    traced.update((target.id, node.value.id))
                elif isinstance(target, ast.Name) and isinstance(
                    node.value, ast.Subscript | ast.Attribute
                ):
                    persistent.add(target.id)
            elif (write := inplace_write(node)) is not None:
                writes.append((*write, node))
        if not aliases or not writes:
            return  # most functions: no plain `a = b` or no in-place write, nothing to trace
        arguments = _tensor_parameters(fn)
        # where each name of an alias pair is bound (in which block) and read
        stores: dict[str, list[tuple[int, ast.AST | None]]] = {}
        loads: dict[str, list[int]] = {}
        for node in nodes:
            if isinstance(node, ast.Name) and node.id in traced:
                if isinstance(node.ctx, ast.Store):
                    block = ctx.parents.get(_statement(ctx, node))
                    stores.setdefault(node.id, []).append((node.lineno, block))
                else:
                    loads.setdefault(node.id, []).append(node.lineno)
        for alias in aliases:
            target = alias.targets[0]
            assert isinstance(target, ast.Name) and isinstance(alias.value, ast.Name)
            new, old = target.id, alias.value.id
            if new == old:
                continue
            for written, line, site in writes:
                if written not in (new, old) or line <= alias.lineno:
                    continue
                if _exclusive(ctx, alias, site):
                    continue  # `if last: kept = f_hat` ... `else: f_hat.add_(h)`
                caller_owned = written == new and old in arguments
                if (
                    (written, line) in indexed
                    and not caller_owned
                    and ctx.flow.graph_origin(alias.value) is None
                ):
                    continue
                other = old if written == new else new
                block = ctx.parents.get(alias)
                if _rebound_between(stores, (new, old), alias.lineno, line, block):
                    continue
                read_later = any(
                    line < at and not _rebound_between(stores, (other,), line, at, block)
                    for at in loads.get(other, [])
                )
                if caller_owned and not read_later:
                    ctx.report(
                        self,
                        alias,
                        f"`{new} = {old}` keeps the caller's tensor `{old}` (a parameter), and "
                        f"the in-place write on `{new}` (line {line}) changes it in the "
                        f"caller too; use `{old}.clone()`",
                    )
                    break
                if read_later or (written == new and old in persistent):
                    ctx.report(
                        self,
                        alias,
                        f"`{new} = {old}` keeps the same tensor, and the in-place write on "
                        f"`{written}` (line {line}) changes `{other}` too; use "
                        f"`{old}.clone()`",
                    )
                    break


def _tensor_parameters(fn: ast.FunctionDef) -> set[str]:
    """Parameters annotated as tensors (`x: torch.Tensor`): the caller keeps them, so a
    write through an alias changes the caller's tensor."""
    params = [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]
    return {
        a.arg
        for a in params
        if a.annotation is not None and ast.unparse(a.annotation).split(".")[-1] == "Tensor"
    }


def _rebound_between(
    stores: dict[str, list[tuple[int, ast.AST | None]]],
    names: tuple[str, ...],
    lo: int,
    hi: int,
    block: ast.AST | None,
) -> bool:
    """A re-binding of one of `names` between the lines, in the alias's own block (one under
    an `if` may not run: `if talking_heads: dots = ...`)."""
    return any(
        lo < at < hi and where is block for name in names for at, where in stores.get(name, [])
    )


def _exclusive(ctx: ModuleContext, a: ast.AST, b: ast.AST) -> bool:
    """`a` and `b` sit in different branches of one `if` that no loop repeats (in a loop,
    `if i == 0: kept = x` and `else: x.mul_(2)` both run, in turn): one of them runs."""
    branches = _branches(ctx, a)
    return any(
        key in branches and branches[key] != branch for key, branch in _branches(ctx, b).items()
    )


def _branches(ctx: ModuleContext, node: ast.AST) -> dict[int, bool]:
    """For each `if` around `node` that no loop of its function encloses: whether `node` is
    in its `else`."""
    found: dict[int, bool] = {}
    child = node
    for ancestor in ctx.ancestors(node):
        if isinstance(ancestor, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            break
        if isinstance(ancestor, ast.For | ast.AsyncFor | ast.While):
            found.clear()  # the branches inside a loop may all run, in turn
        elif isinstance(ancestor, ast.If) and child is not ancestor.test:
            found[id(ancestor)] = any(child is stmt for stmt in ancestor.orelse)
        child = ancestor
    return found


def _statement(ctx: ModuleContext, node: ast.AST) -> ast.AST:
    current: ast.AST = node
    while not isinstance(current, ast.stmt):
        parent = ctx.parents.get(current)
        if parent is None:
            return current
        current = parent
    return current


def _written_names(ctx: ModuleContext) -> set[str]:
    """Every name the module writes into (`name[...] = ...` and the like, an in-place method
    called on it): the writes `_check_function` counts are among them."""
    found = {
        node.value.id
        for node in ctx.flow.nodes(ast.Subscript)
        if isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name)
    }
    for call in ctx.flow.nodes(ast.Call):
        write = inplace_write(call)
        if write is not None:
            found.add(write[0])
    return found
