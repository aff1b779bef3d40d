"""inplace-on-saved-tensor: a tensor autograd saved for backward, then written in place."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.gradmode import grad_may_be_off
from torchdoctor.agent.checks.analysis.vocabulary import INFERENCE_METHOD_PREFIXES
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_scope
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import inplace_write
from torchdoctor.agent.models import Severity

# Operations whose backward reads their own output (`exp`: d/dx e^x = e^x).
_SAVE_OUTPUT = frozenset({"exp", "sigmoid", "tanh", "softmax", "log_softmax", "sqrt", "rsqrt"})
# Operations whose backward reads their input (a statistic or a product of it).
_SAVE_INPUT = frozenset({"var", "std", "norm", "log", "pow", "mm", "matmul", "bmm"})


class InplaceOnSavedTensor(Rule):
    """Detects an in-place write — an indexed assignment (`sim[mask] = 0`), an augmented
    assignment (`x /= std`) or a `_` method (`masked_fill_`) — into a tensor of the autograd
    graph that an earlier operation saved for its backward pass: the output of `exp`,
    `sigmoid`, `tanh`, `softmax`, `log_softmax`, `sqrt`, `rsqrt`, or the input of `var`,
    `std`, `norm`, `log`, `pow`, `mm`/`matmul`/`bmm`, in a function that back-propagates or a
    module's method, with autograd recording.

    Why it matters: those operations keep the tensor to compute their gradient. Writing into
    it bumps its version counter, and `loss.backward()` then fails with "one of the variables
    needed for gradient computation has been modified by an inplace operation" — on the
    first training step, after whatever set-up the run did. (Under `no_grad` or on tensors
    outside the graph nothing is saved and nothing fails.)

    Not reported: writes under `no_grad`/`inference_mode`, tensors not derived from a model
    output or a loss, names rebound between the saving operation and the write, writes
    before the saving operation, a model's inference method (`generate`, `predict`,
    `decode`, ...) that no function of its module calls on the way to a backward pass
    (CenterNet's `generate`: a sigmoid's output masked in place to keep the peaks), and test
    modules.

    Example:
        sim = torch.exp(out @ out.t() / temperature)
        sim[torch.eye(n, dtype=torch.bool, device=sim.device)] = 0.0
        loss = -torch.log(pos / sim.sum(dim=-1)).mean()

    Fix: write out of place (`sim = sim.masked_fill(mask, 0.0)`), or select the entries
    without writing (`sim.masked_select(~mask)`).
    """

    id = "inplace-on-saved-tensor"
    point = 4
    severity = Severity.HIGH
    title = "In-place write into a tensor saved for backward"
    items: ClassVar[tuple[str, ...]] = ("4.3",)
    triggers = Triggers(tuple(f"{op}(" for op in sorted(_SAVE_OUTPUT | _SAVE_INPUT)))

    def applies(self, ctx: ModuleContext) -> bool:
        return not ctx.test_module and any(
            f"{op}(" in ctx.source for op in (*_SAVE_OUTPUT, *_SAVE_INPUT)
        )

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        for fn in ctx.flow.nodes(ast.FunctionDef):
            owner = ctx.calls.owner(fn)
            in_module = owner is not None and owner.name in ctx.flow.module_classes
            if not in_module and not ctx.loops.backpropagates(fn.body):
                continue
            if in_module and _inference_only(ctx, fn):
                continue
            self._check_function(ctx, fn)

    def _check_function(self, ctx: ModuleContext, fn: ast.FunctionDef) -> None:
        nodes = list(walk_scope(fn.body))
        saved: dict[str, tuple[int, str, ast.expr]] = {}  # name -> (line, op, graph probe)
        rebound: dict[str, list[int]] = {}
        for node in nodes:
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        rebound.setdefault(target.id, []).append(node.lineno)
                op = _op_name(node.value)
                single = node.targets[0] if len(node.targets) == 1 else None
                if op in _SAVE_OUTPUT and isinstance(single, ast.Name):
                    saved[single.id] = (node.lineno, op, node.value)
            if isinstance(node, ast.Call | ast.BinOp):
                for read, op_read in _saved_inputs(node):
                    saved.setdefault(read.id, (node.lineno, op_read, read))
        reported: set[str] = set()
        for node in nodes:
            write = _written(node)
            if write is None:
                continue
            name, line = write
            if name in reported or name not in saved:
                continue
            saved_at, op, probe = saved[name]
            first = saved_at if op in _SAVE_OUTPUT else saved_at - 1  # `x = x.pow(2)`: a new x
            if line <= saved_at or any(first < at < line for at in rebound.get(name, [])):
                continue
            if grad_may_be_off(ctx, node) or not _from_graph(ctx, nodes, probe, saved_at):
                continue
            reported.add(name)
            role = "output" if op in _SAVE_OUTPUT else "input"
            ctx.report(
                self,
                node,
                f"`{name}` is the {role} `{op}` (line {saved_at}) kept for its backward pass; "
                'writing into it in place makes backward() fail ("modified by an inplace '
                'operation"); write out of place (`masked_fill`, a new tensor) instead',
            )


def _from_graph(ctx: ModuleContext, nodes: list[ast.AST], expr: ast.expr, line: int) -> bool:
    """Whether `expr`, as it stands at `line`, derives from a model or layer call or a loss
    made earlier in the function (`out_1` of `_, out_1 = net(x)`, `x = self.embed(x)`).
    Bindings after `line` do not count, nor a function's parameters: a forward's input is
    data for a top-level model, and nothing is saved for data."""
    seen: set[tuple[str, int]] = set()
    todo: list[tuple[ast.expr, int]] = [(expr, line)]
    while todo and len(seen) < 64:
        value, at = todo.pop()
        for sub in ast.walk(value):
            if isinstance(sub, ast.Call) and (
                ctx.flow.is_model_call(sub) or ctx.flow.is_loss_callee(sub.func)
            ):
                return True
            if not isinstance(sub, ast.Name) or (sub.id, at) in seen:
                continue
            seen.add((sub.id, at))
            for node in nodes:
                if not isinstance(node, ast.Assign) or node.lineno >= at:
                    continue
                targets = [
                    t
                    for target in node.targets
                    for t in (target.elts if isinstance(target, ast.Tuple) else [target])
                ]
                if any(isinstance(t, ast.Name) and t.id == sub.id for t in targets):
                    todo.append((node.value, node.lineno))
    return False


def _op_name(value: ast.expr) -> str | None:
    """`exp` of `torch.exp(x)`, `x.exp()`, `F.softmax(x, 1)`."""
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute | ast.Name):
        return value.func.attr if isinstance(value.func, ast.Attribute) else value.func.id
    return None


def _saved_inputs(node: ast.Call | ast.BinOp) -> list[tuple[ast.Name, str]]:
    """The names an input-saving operation reads: `x.var()`, `torch.var(x)`, `x @ w`."""
    if isinstance(node, ast.BinOp):
        if isinstance(node.op, ast.MatMult):
            return [(s, "matmul") for s in (node.left, node.right) if isinstance(s, ast.Name)]
        return []
    op = _op_name(node)
    if op not in _SAVE_INPUT:
        return []
    assert isinstance(node.func, ast.Attribute | ast.Name)
    found: list[tuple[ast.Name, str]] = []
    receiver = node.func.value if isinstance(node.func, ast.Attribute) else None
    if isinstance(receiver, ast.Name) and receiver.id not in ("torch", "F", "np", "math"):
        found.append((receiver, op))
    found += [(a, op) for a in node.args[:2] if isinstance(a, ast.Name)]
    return found


def _written(node: ast.AST) -> tuple[str, int] | None:
    """(name, line) of an in-place write into a plain name."""
    if isinstance(node, ast.Assign):
        for target in node.targets:
            if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
                return target.value.id, node.lineno
    if isinstance(node, ast.AugAssign):
        target = node.target
        if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name):
            return target.value.id, node.lineno
        if isinstance(target, ast.Name):
            return target.id, node.lineno
    return inplace_write(node)


_INFERENCE_METHODS = (*INFERENCE_METHOD_PREFIXES, "generate", "detect")


def _inference_only(ctx: ModuleContext, fn: ast.FunctionDef) -> bool:
    """A model's inference method (`generate`, `predict_*`, `decode`) that nothing in its
    module calls from a function that back-propagates: it runs to produce outputs, not to
    train, so what it writes in place is never differentiated."""
    if not fn.name.lstrip("_").startswith(_INFERENCE_METHODS):
        return False
    return not any(
        (caller := ctx.enclosing_function(site)) is not None
        and ctx.loops.backpropagates(caller.body)
        for site in ctx.calls.call_sites(fn)
    )
