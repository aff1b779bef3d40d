"""activation-on-logits: the network's last layer is an activation before a logits loss."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import nodes_of, walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import (
    class_methods,
    module_class_defs,
    nn_layer,
    sequential_layers,
    terminal_name,
)
from torchdoctor.agent.models import Severity

_ACTIVATIONS = frozenset({"ReLU", "ReLU6", "LeakyReLU", "ELU", "GELU", "SiLU", "Sigmoid", "Tanh"})
_FUNCTIONAL = frozenset(
    {
        "torch.relu",
        "torch.sigmoid",
        "torch.tanh",
        "torch.nn.functional.relu",
        "torch.nn.functional.sigmoid",
        "torch.nn.functional.tanh",
        "torch.nn.functional.gelu",
        "torch.nn.functional.leaky_relu",
        "torch.nn.functional.silu",
    }
)
_LOGIT_LOSSES = (
    "CrossEntropyLoss",
    "cross_entropy",
    "BCEWithLogitsLoss",
    "binary_cross_entropy_with_logits",
)


class ActivationOnLogits(Rule):
    """Detects a network whose final operation is an activation (ReLU, sigmoid, tanh...) — a
    `Linear` then an activation at the end of an `nn.Sequential` bound to a plain name, or the
    value the `forward` of the module's only network returns — in a module that trains with a
    logits loss (`CrossEntropyLoss`, `BCEWithLogitsLoss`).

    Why it matters: those losses expect unbounded logits. A ReLU clips every negative logit to
    zero (classes become indistinguishable and gradients die), a sigmoid or tanh squeezes them
    into a narrow range so the softmax can never become confident: training stalls.

    Example:
        model = nn.Sequential(nn.Linear(128, 10), nn.ReLU())
        loss = nn.CrossEntropyLoss()(model(x), y)

    Fix: return the raw output of the last Linear layer and let the loss apply the
    (log-)softmax or sigmoid.
    """

    id = "activation-on-logits"
    point = 4
    severity = Severity.MEDIUM
    title = "Activation applied to the logits"
    items: ClassVar[tuple[str, ...]] = ("4.3",)
    triggers = Triggers(_LOGIT_LOSSES)

    def applies(self, ctx: ModuleContext) -> bool:
        return any(loss in ctx.source for loss in _LOGIT_LOSSES)

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        for node in nodes_of(ctx, ast.Call):
            if isinstance(node, ast.Call) and terminal_name(node.func) == "Sequential":
                if not self._whole_network(ctx, node):
                    continue  # `self.block = nn.Sequential(...)`: a sub-block, more may follow
                layers = sequential_layers(ctx, node)
                if (
                    len(layers) >= 2
                    and layers[-1][0] in _ACTIVATIONS
                    and layers[-2][0] in ("Linear", "LazyLinear")
                ):
                    self._report(ctx, layers[-1][1], layers[-1][0])
        with_forward = [
            (cls, forward)
            for cls in module_class_defs(ctx)
            if (forward := class_methods(cls).get("forward")) is not None
        ]
        if len(with_forward) != 1:
            return  # several networks: which one feeds the loss is not known statically
        for _, forward in with_forward:
            for ret in walk_tree(forward):
                if isinstance(ret, ast.Return) and isinstance(ret.value, ast.Call):
                    name = self._activation(ctx, ret.value)
                    if name:
                        self._report(ctx, ret.value, name)

    @staticmethod
    def _whole_network(ctx: ModuleContext, node: ast.Call) -> bool:
        """A Sequential bound to a plain name or returned: the network itself, not a block."""
        parent = ctx.parents.get(node)
        if isinstance(parent, ast.Return):
            return True
        return isinstance(parent, ast.Assign) and all(
            isinstance(t, ast.Name) for t in parent.targets
        )

    def _activation(self, ctx: ModuleContext, call: ast.Call) -> str:
        qual = ctx.call_qualname(call)
        if qual in _FUNCTIONAL:
            return qual.rsplit(".", 1)[-1]
        func = call.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr in ("relu", "sigmoid", "tanh")
            and not call.args
            and ctx.qualname(func) is None
        ):
            return func.attr  # x.relu()
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id == "self"  # self.act(x) where self.act = nn.ReLU()
        ):
            for value in ctx.flow.definitions(func):
                layer = nn_layer(ctx, value)
                if layer in _ACTIVATIONS:
                    return layer
        return ""

    def _report(self, ctx: ModuleContext, node: ast.AST, name: str) -> None:
        ctx.report(
            self,
            node,
            f"the network ends in {name}, but the loss expects raw logits: negative or large "
            "logits are squashed and training stalls",
        )
