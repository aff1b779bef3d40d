"""detach-inplace-on-argument: `x.detach_()` on a tensor the caller passed in."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

# Helpers whose purpose is to cut the caller's graph (truncated back-propagation).
_DETACHING_HELPER = re.compile(r"detach|repackage|truncate|cut_graph", re.IGNORECASE)


class DetachInplaceOnArgument(Rule):
    """Detects `x.detach_()` where `x` may still be an argument of the function (no
    unconditional rebinding before it), in a function not named for detaching
    (`repackage_hidden`): a discriminator wrapper's `forward(images, detach=True)` that
    calls `images.detach_()`.

    Why it matters: `detach_()` works in place on the tensor object the caller holds. The
    caller's `fake` images are cut from the generator's graph too, so a later generator loss
    computed from the same tensor gets no gradient (or DDP complains about parameters that
    received none), while the code reads as if only the discriminator's view were detached.

    Not reported: `x = x.detach()` (a new tensor), `detach_()` on locals, loop variables,
    subscripts and attributes (`hidden[0].detach_()`, `param.grad.detach_()`), arguments
    rebound before the call on every path, and helpers named for detaching.

    Example:
        def forward(self, images, detach=False):
            if detach:
                images.detach_()
            return self.D(images)

    Fix: `images = images.detach()`.
    """

    id = "detach-inplace-on-argument"
    point = 4
    severity = Severity.MEDIUM
    title = "detach_() on a tensor the caller passed in"
    items: ClassVar[tuple[str, ...]] = ("4.3",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset({"detach_"})
    triggers = Triggers(("detach_(",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        func = node.func
        if not (
            isinstance(func, ast.Attribute)
            and func.attr == "detach_"
            and isinstance(func.value, ast.Name)
        ):
            return
        name = func.value.id
        fn = ctx.enclosing_function(node)
        if fn is None or _DETACHING_HELPER.search(fn.name):
            return
        params = {a.arg for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]}
        if name not in params - {"self", "cls"} or _rebound_on_every_path(fn, name, node):
            return
        ctx.report(
            self,
            node,
            f"`{name}.detach_()` detaches the caller's tensor in place: whatever the caller "
            f"computes from `{name}` afterwards gets no gradient; use `{name} = "
            f"{name}.detach()`",
            data={"name": name},
        )


def _rebound_on_every_path(
    fn: ast.FunctionDef | ast.AsyncFunctionDef, name: str, call: ast.Call
) -> bool:
    """A plain assignment to `name` in the function's own body (not under an `if` or a
    loop) before the call (`x += y` is no rebinding: it writes into the caller's tensor)."""
    for stmt in fn.body:
        if stmt.lineno >= call.lineno:
            return False
        if isinstance(stmt, ast.Assign | ast.AnnAssign):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            for target in targets:
                names = target.elts if isinstance(target, ast.Tuple) else [target]
                if any(isinstance(n, ast.Name) and n.id == name for n in names):
                    return True
    return False
