"""loop-variable-rebound: a loop's last statement updates the loop variable, which nothing reads."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.batch_outputs import in_loader_loop
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_scope, walk_tree
from torchdoctor.agent.models import Severity

# Moves and casts of a dict's values are tensor-move-discarded's (`v = v.to(device)`).
_MOVES = frozenset(
    {"to", "cuda", "cpu", "float", "double", "half", "bfloat16", "long", "int", "bool", "type"}
)
_DICT_VIEWS = frozenset({"values", "items"})
# Views and reshapes of the variable: rebinding the name to one loses no update (whatever was
# written went through the view into the element: Adagrad's `state_sum =
# torch.view_as_complex(state_sum)` after updating it in place).
_VIEWS = frozenset(
    {"view", "view_as", "view_as_real", "view_as_complex", "reshape", "flatten", "squeeze",
     "unsqueeze", "permute", "transpose", "t", "expand", "expand_as", "contiguous", "detach"}
)  # fmt: skip


class LoopVariableRebound(Rule):
    """Detects a `for` loop whose body ends by computing a new value of its own loop variable
    from that variable (`noise = noise * (max_norm / norm)`, `avg_p = decay * avg_p + (1 -
    decay) * p`, `x = torch.clamp(x, 0, 1)`, `x = x.clamp(0, 1)`), with nothing reading the
    variable afterwards: not later in the body, not after the loop.

    Why it matters: the loop variable is a name bound to each element in turn; assigning it
    rebinds the name and leaves the element in the list, tuple or parameter group as it was.
    The next iteration replaces the name, so the update is lost and the code reads as if it
    renormalised the noise predictions (sd-scripts' Lumina CFG renorm, `2ba1cc77`), moved the
    averaged model's parameters (ACER's shared average model) or moved a batch's tensors.

    Not reported: loops with a `break` or an `else:` (the last value is kept), a variable read
    after the loop or later in the body, `_`, views and reshapes of the variable (`x =
    torch.view_as_complex(x)` after updating it in place through the view), in-place methods
    that return their receiver (`m = m.eval()` over `model.named_modules()`, `p = p.clamp_(0,
    1)`: the element itself changed), moves and casts of a network's submodules (`module =
    module.to(torch.bfloat16)` over `named_modules()`: `Module.to` works in place), moves and
    casts of a batch from a data loader (`y = y.to(device)` as the last line of `for x, y in
    train_loader:`: the loader keeps no batch to update), plain calls
    (`img = save_figure(img, path)` runs for its side effect), updates that do not read the
    variable, moves and casts of a dict's values (`tensor-move-discarded`), names declared
    `global`/`nonlocal`.

    Example:
        for noise_norm, max_new_norm, noise in zip(noise_norms, max_new_norms, noise_pred):
            if noise_norm >= max_new_norm:
                noise = noise * (max_new_norm / noise_norm)

    Fix: write the element back (`noise_pred[i] = noise_pred[i] * ...` over `enumerate`), use
    an in-place method (`noise.mul_(...)`, `p.copy_(...)` under `torch.no_grad()`), or build
    a new list.
    """

    id = "loop-variable-rebound"
    point = 4
    severity = Severity.HIGH
    title = "Loop variable rebound instead of the element updated"
    items: ClassVar[tuple[str, ...]] = ("4.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.For, ast.AsyncFor)

    def applies(self, ctx: ModuleContext) -> bool:
        return ctx.flow.imports("torch")

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.For | ast.AsyncFor)
        if node.orelse:
            return
        names = {n.id for n in walk_tree(node.target) if isinstance(n, ast.Name) and n.id != "_"}
        if not names:
            return
        stores = [
            store
            for store in _tail_stores(node.body)
            if isinstance(target := store.targets[0], ast.Name) and target.id in names
        ]
        if not stores or _breaks(node):  # the walk for a `break` only where one matters
            return
        for store in stores:
            target = store.targets[0]
            assert isinstance(target, ast.Name)
            name = target.id
            if not _updates(ctx, store.value, name, node):
                continue
            if _read_after(ctx, node, name):
                continue
            ctx.report(
                self,
                store,
                f"`{name}` is the loop variable: this rebinds the name, the next iteration "
                f"replaces it, and the element of `{ast.unparse(node.iter)}` keeps its old "
                "value. Write it back by index or update it in place.",
            )


def _breaks(loop: ast.For | ast.AsyncFor) -> bool:
    """A `break` of this loop (not of a loop nested in it)."""
    todo: list[ast.AST] = list(loop.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Break):
            return True
        if isinstance(node, ast.For | ast.AsyncFor | ast.While | ast.FunctionDef | ast.Lambda):
            continue
        todo.extend(ast.iter_child_nodes(node))
    return False


def _tail_stores(body: list[ast.stmt]) -> list[ast.Assign]:
    """The plain `name = ...` stores a body ends with (through the branches of a last `if`)."""
    last = body[-1]
    if isinstance(last, ast.Assign) and len(last.targets) == 1:
        return [last] if isinstance(last.targets[0], ast.Name) else []
    if isinstance(last, ast.If):
        return _tail_stores(last.body) + (_tail_stores(last.orelse) if last.orelse else [])
    return []


def _updates(ctx: ModuleContext, value: ast.expr, name: str, loop: ast.For | ast.AsyncFor) -> bool:
    """`value` computes a new value of `name` from it: arithmetic, a method of the variable,
    or a torch function (not a plain call, which may run for its effect)."""
    if not any(isinstance(n, ast.Name) and n.id == name for n in walk_tree(value)):
        return False
    if isinstance(value, ast.BinOp | ast.UnaryOp):
        return True
    if not isinstance(value, ast.Call):
        return False
    func = value.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    if called in _VIEWS:
        return False
    receiver = func.value if isinstance(func, ast.Attribute) else None
    if isinstance(receiver, ast.Name) and receiver.id == name and _returns_itself(called):
        return False  # `m = m.eval()`, `p = p.add_(1)`: the element itself was changed
    own = isinstance(receiver, ast.Name) and receiver.id == name
    if own and called in _MOVES and _over_modules(loop):
        return False  # `module = module.to(torch.bfloat16)`: `Module.to` works in place
    if isinstance(receiver, ast.Name) and receiver.id == name:
        assert isinstance(func, ast.Attribute)
        # a batch a data loader yields is made afresh each iteration and kept by nothing:
        # moving it (`y = y.to(device)`) loses no update of an element someone reads
        return not (func.attr in _MOVES and (_over_dict_view(loop) or in_loader_loop(ctx, value)))
    qual = ctx.flow.qualname_of(value) or ""
    return qual.startswith("torch.")


_SELF_RETURNING = frozenset({"eval", "train", "requires_grad_", "apply", "share_memory_"})
"""Module methods that change the module in place and return it."""


def _returns_itself(method: str) -> bool:
    """An in-place method that returns its receiver: a tensor's or module's `*_` method
    (`add_`, `clamp_`, `requires_grad_`), a module's `eval()`/`train()`/`apply(fn)`."""
    return method in _SELF_RETURNING or (method.endswith("_") and not method.startswith("_"))


_MODULE_ITERATORS = frozenset({"modules", "named_modules", "children", "named_children"})


def _over_modules(loop: ast.For | ast.AsyncFor) -> bool:
    """A loop over a network's submodules (`for name, module in model.named_modules():`):
    a module's moves and casts (`to`, `cuda`, `half`) change it in place and return it."""
    iterated = loop.iter
    return (
        isinstance(iterated, ast.Call)
        and isinstance(iterated.func, ast.Attribute)
        and iterated.func.attr in _MODULE_ITERATORS
    )


def _over_dict_view(loop: ast.For | ast.AsyncFor) -> bool:
    iterated = loop.iter
    return (
        isinstance(iterated, ast.Call)
        and isinstance(iterated.func, ast.Attribute)
        and iterated.func.attr in _DICT_VIEWS
    )


def _read_after(ctx: ModuleContext, loop: ast.For | ast.AsyncFor, name: str) -> bool:
    """`name` read after the loop in its scope, or declared global/nonlocal there."""
    scope = ctx.enclosing_function(loop) or ctx.tree
    end = loop.end_lineno or loop.lineno
    for node in walk_scope(scope.body):
        if isinstance(node, ast.Global | ast.Nonlocal) and name in node.names:
            return True
        if (
            isinstance(node, ast.Name)
            and node.id == name
            and not isinstance(node.ctx, ast.Store)
            and node.lineno > end
        ):
            return True
    return False
