"""super-not-called: `super.method()`, an attribute of the builtin `super` type."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity


class SuperNotCalled(Rule):
    """Detects `super.name` (`super.entropy()`, `super.__init__()`) where `super` is the
    builtin: the parent's method is read from the `super` type itself, not from a `super()`
    object bound to this instance.

    Why it matters: the `super` type has no such attribute: the line raises AttributeError
    when it runs, and an override that is rarely called (an `entropy` used only for a
    logging bonus, an error path) carries the crash until then. Where the type has one (the
    methods every object has: `super.__init__(self)`, `super.__str__(self)`), object's
    version runs instead of the parent's: `nn.Module.__init__` is skipped, an exception's
    message becomes its repr. ikostrikov's
    pytorch-a2c-ppo-acktr-gail had `return super.entropy().sum(-1)` until `67b0115`.

    Not reported: a module that binds its own `super` (an import, an assignment, a
    parameter).

    Example:
        def entropy(self):
            return super.entropy().sum(-1)

    Fix: call it: `super().entropy()`.
    """

    id = "super-not-called"
    point = 1
    severity = Severity.HIGH
    title = "super used without being called"
    items: ClassVar[tuple[str, ...]] = ("1.1",)
    triggers = Triggers(("super",))

    def finish(self, ctx: ModuleContext) -> None:
        if "super." not in ctx.source:
            return
        if (
            any(
                isinstance(n.ctx, ast.Store | ast.Del) and n.id == "super"
                for n in ctx.flow.nodes(ast.Name)
            )
            or "super" in ctx.imports.aliases
        ):
            return
        for node in ctx.flow.nodes(ast.Attribute):
            value = node.value
            if isinstance(value, ast.Name) and value.id == "super":
                effect = (
                    f"is the `super` type's own `{node.attr}` (object's), not the parent "
                    "class's: the parent's version never runs"
                    if node.attr in _OWN
                    else "reads an attribute of the builtin `super` type, which has none: "
                    "AttributeError when this line runs"
                )
                ctx.report(
                    self,
                    node,
                    f"`super.{node.attr}` {effect}; call it: `super().{node.attr}`",
                    data={"attribute": node.attr},
                )


_OWN = frozenset(dir(super))
"""What the `super` type has itself (`__init__`, `__str__`... inherited from object)."""
