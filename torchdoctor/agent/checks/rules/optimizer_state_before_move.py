"""optimizer-state-before-move: optimizer state restored while the model is still on the CPU,
the model moved to the GPU afterwards."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from typing import ClassVar, TypeGuard

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import FunctionNode, nodes_of, walk_scope, walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_PARAMETER_CALLS = frozenset({"parameters", "named_parameters"})
_MOVES = frozenset({"cuda", "to"})


class OptimizerStateBeforeMove(Rule):
    """Detects `optimizer.load_state_dict(...)` followed, in the same function or script, by
    the first move of the model that optimizer was built on to an accelerator
    (`model.cuda()`, `model.to(device)`): a resumed run that restores the optimizer before
    moving the model (faster-rcnn.pytorch's `trainval_net.py` moved the network after the
    resume block). The optimizer is matched to the model through the `.parameters()` or
    `.named_parameters()` its parameter list was built from, also through a list of parameter
    groups filled in a loop.

    Why it matters: `load_state_dict` puts each state tensor (momentum buffers, Adam's moving
    averages) on the device of its parameter, the CPU at that point. `model.cuda()` then moves
    the parameters but not the optimizer's state, so the first `step()` mixes CUDA gradients
    with CPU buffers and fails ("Expected all tensors to be on the same device"), or, with
    `foreach` off on some versions, runs the update on the wrong device.

    Not reported: a model already moved before the load (a later `.cuda()` is a no-op), moves
    to the CPU, loads into an optimizer whose parameters are not traced to the moved model,
    and other objects' `load_state_dict` (models, schedulers, scalers).

    Example:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        if args.resume:
            optimizer.load_state_dict(checkpoint["optimizer"])
        model.cuda()

    Fix: move the model first, build the optimizer, then restore its state; or move the
    state after loading (`for s in optimizer.state.values(): ...`).
    """

    id = "optimizer-state-before-move"
    point = 1
    severity = Severity.HIGH
    title = "Optimizer state restored before the model moved to the GPU"
    items: ClassVar[tuple[str, ...]] = ("1.3",)
    triggers = Triggers(("load_state_dict",))

    def applies(self, ctx: ModuleContext) -> bool:
        return "load_state_dict" in ctx.source and "parameters()" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        loads = [n for n in nodes_of(ctx, ast.Call) if _restores_state(n)]
        if not loads:
            return
        # only the scopes holding a restore are walked (from the engine's node index)
        around = {
            id(outer): outer
            for load in loads
            for outer in ctx.ancestors(load)
            if isinstance(outer, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        at_module_level = any(
            not any(isinstance(outer, _SCOPE_KINDS) for outer in ctx.ancestors(load))
            for load in loads
        )
        for scope in _scopes(ctx.tree, around, at_module_level):
            self._check_scope(ctx, scope)

    def _check_scope(self, ctx: ModuleContext, body: list[ast.stmt]) -> None:
        nodes = list(walk_scope(body))
        loads = [n for n in nodes if _restores_state(n)]
        if not loads:
            return
        moves: list[tuple[int, str]] = [
            (n.lineno, model)
            for n in nodes
            if isinstance(n, ast.Call) and (model := _moved_model(n)) is not None
        ]
        moves += [  # `model = Net().cuda()`, `model = nn.DataParallel(model).to(device)`
            (n.lineno, ast.unparse(t))
            for n in nodes
            if isinstance(n, ast.Assign) and _chain_moves(n.value)
            for t in n.targets
            if isinstance(t, ast.Name | ast.Attribute)
        ]
        if not moves:
            return
        for load in loads:
            assert isinstance(load.func, ast.Attribute)
            optimizer = ast.unparse(load.func.value)
            for model in _optimized_models(nodes, optimizer):
                first = min((line for line, moved in moves if moved == model), default=None)
                if first is None or first <= load.lineno:
                    continue
                ctx.report(
                    self,
                    load,
                    f"`{optimizer}` restores its state while `{model}` is still on the CPU, "
                    f"and `{model}` moves to the accelerator only at line {first}: the "
                    "state tensors stay on the CPU and the first step() mixes devices; move "
                    "the model before building and restoring the optimizer",
                    data={"optimizer": optimizer, "model": model, "move_line": first},
                )
                break


_SCOPE_KINDS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


def _restores_state(node: ast.AST) -> TypeGuard[ast.Call]:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "load_state_dict"
    )


def _scopes(
    tree: ast.Module, functions: dict[int, FunctionNode], module_level: bool
) -> Iterator[list[ast.stmt]]:
    """The module's own statements (when `module_level`), then the bodies of the
    `functions` (by id), in the order of a walk of the tree (walked only to order two or
    more: most modules restore an optimizer in one function)."""
    if module_level:
        yield [
            s
            for s in tree.body
            if not isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        ]
    if len(functions) == 1:
        yield from (fn.body for fn in functions.values())
        return
    for node in walk_tree(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and id(node) in functions:
            yield node.body


def _is_move(call: ast.Call) -> bool:
    """`x.cuda()` / `x.to(device)` (not `.to('cpu')`, not a dtype cast)."""
    if not isinstance(call.func, ast.Attribute) or call.func.attr not in _MOVES:
        return False
    if call.func.attr == "cuda":
        return True
    if not call.args:
        return any(k.arg == "device" for k in call.keywords)
    first = call.args[0]
    if isinstance(first, ast.Constant) and first.value == "cpu":
        return False
    return not (isinstance(first, ast.Attribute) and ast.unparse(first).startswith("torch."))


def _moved_model(call: ast.Call) -> str | None:
    """`model` of `model.cuda()` / `model.to(device)`."""
    if not _is_move(call):
        return None
    assert isinstance(call.func, ast.Attribute)
    receiver = call.func.value
    return ast.unparse(receiver) if isinstance(receiver, ast.Name | ast.Attribute) else None


def _chain_moves(value: ast.expr) -> bool:
    """A call chain with a move in it: `Net().cuda()`, `DataParallel(net).to(device)`."""
    node: ast.expr = value
    while isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        if _is_move(node):
            return True
        node = node.func.value
    return False


def _optimized_models(nodes: list[ast.AST], optimizer: str) -> list[str]:
    """The models whose parameters built `optimizer` in this scope: `.parameters()` in its
    constructor's arguments, or in what a name given to it was built from (`params +=
    [{"params": [v]}]` in a loop over `model.named_parameters()`)."""
    models: list[str] = []
    for node in nodes:
        if not (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and any(ast.unparse(t) == optimizer for t in node.targets)
        ):
            continue
        given = [*node.value.args, *(k.value for k in node.value.keywords if k.arg == "params")]
        for arg in given[:1] if node.value.args else given:
            for model in _parameter_owners(arg):
                if model not in models:
                    models.append(model)
            if isinstance(arg, ast.Name):
                for model in _owners_of_name(nodes, arg.id):
                    if model not in models:
                        models.append(model)
    return models


def _parameter_owners(expr: ast.AST) -> Iterator[str]:
    for sub in ast.walk(expr):
        if (
            isinstance(sub, ast.Call)
            and isinstance(sub.func, ast.Attribute)
            and sub.func.attr in _PARAMETER_CALLS
            and isinstance(sub.func.value, ast.Name | ast.Attribute)
        ):
            yield ast.unparse(sub.func.value)


def _owners_of_name(nodes: list[ast.AST], name: str) -> Iterator[str]:
    """Models whose parameters went into the list `name`: its assignments, `+=` and
    `.append`/`.extend` calls, and the loops around those over `model.named_parameters()`."""
    for node in nodes:
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
            and _a_collection(node.value)
        ):
            yield from _parameter_owners(node.value)
        elif isinstance(node, ast.For) and _fills(node, name):
            yield from _parameter_owners(node.iter)


def _a_collection(value: ast.expr) -> bool:
    """A list of parameters or groups (`[...]`, `list(...)`, `a + b`, `chain(...)`), not an
    object built on them (another optimizer, a scheduler)."""
    if isinstance(value, ast.Call):
        callee = ast.unparse(value.func).rsplit(".", 1)[-1]
        return callee in ("list", "tuple", "chain", "filter")
    return True


def _fills(loop: ast.For, name: str) -> bool:
    for node in walk_scope(loop.body):
        if (
            isinstance(node, ast.AugAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == name
        ):
            return True
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("append", "extend")
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == name
        ):
            return True
    return False
