"""missing-super-init: an nn.Module subclass's `__init__` never calls `super().__init__()`."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity


class MissingSuperInit(Rule):
    """Detects an `nn.Module` subclass (directly or through local base classes) whose
    `__init__` does not call `super().__init__(...)`, `super(Cls, self).__init__(...)` or
    `Base.__init__(self, ...)`.

    Why it matters: `nn.Module.__init__` creates the registries for parameters, buffers and
    sub-modules; the first `self.layer = nn.Linear(...)` then fails with "cannot assign module
    before Module.__init__() call", or, if no module is assigned, hooks, `.to()` and
    `state_dict()` misbehave later.

    Example:
        class Net(nn.Module):
            def __init__(self):
                self.fc = nn.Linear(4, 2)

    Fix: make `super().__init__()` the first statement of `__init__`.
    """

    id = "missing-super-init"
    point = 1
    severity = Severity.HIGH
    title = "nn.Module subclass without super().__init__()"
    items: ClassVar[tuple[str, ...]] = ("1.1",)
    triggers = Triggers(("Module",))

    def applies(self, ctx: ModuleContext) -> bool:
        return "Module" in ctx.source and bool(ctx.flow.module_classes)

    def finish(self, ctx: ModuleContext) -> None:
        if "Module" not in ctx.source:
            return
        for name, init in ctx.flow.module_inits():
            if not _calls_parent_init(init):
                ctx.report(
                    self,
                    init,
                    f"`{name}.__init__` never calls super().__init__(): parameters and "
                    "sub-modules cannot be registered",
                    header_only=True,
                )


def _calls_parent_init(init: ast.FunctionDef) -> bool:
    for node in walk_tree(init):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        if node.func.attr not in ("__init__", "__setstate__"):
            continue
        receiver = node.func.value
        if (
            isinstance(receiver, ast.Call)
            and isinstance(receiver.func, ast.Name)
            and receiver.func.id == "super"
        ):
            return True
        if isinstance(receiver, ast.Name | ast.Attribute) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Name) and first.id == "self":
                return True
    return False
