"""module-shallow-copy: `copy.copy(module)` shares the module's parameters."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity


class ModuleShallowCopy(Rule):
    """Detects `copy.copy(x)` where `x` holds an `nn.Module` (built from a torch layer or a
    class of the project that subclasses one), typically a target network in RL code.

    Why it matters: a shallow copy gets its own attribute dictionary but the same `_parameters`
    and `_modules` dictionaries, so every weight is shared. A target network made this way
    moves with every optimizer step of the online network: soft updates copy a tensor onto
    itself and the target never lags behind, which silently breaks DQN/DDPG/TD3/SAC targets.

    Not reported: `copy.copy` of a value that is not known to be a module (a config, a list,
    an environment), `copy.deepcopy`, and test modules (a test of a layer's copy semantics
    asserts that the weights are shared).

    Example:
        self.target_critic = copy.copy(self.critic)

    Fix: `copy.deepcopy(self.critic)` (or build a new network and `load_state_dict` the
    online one's weights).
    """

    id = "module-shallow-copy"
    point = 1
    severity = Severity.HIGH
    title = "Module copied with copy.copy"
    items: ClassVar[tuple[str, ...]] = ("1.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset({"copy"})
    triggers = Triggers(("copy",))

    def applies(self, ctx: ModuleContext) -> bool:
        return "copy" in ctx.source and not ctx.test_module

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if (
            ctx.test_module
            or ctx.call_qualname(node) != "copy.copy"
            or len(node.args) != 1
            or node.keywords
        ):
            return
        if ctx.flow.is_module_value(node.args[0]):
            ctx.report(
                self,
                node,
                f"`copy.copy({ast.unparse(node.args[0])})` shares every parameter with the "
                "original module: updating one updates the other (a target network that never "
                "lags); use copy.deepcopy",
            )
