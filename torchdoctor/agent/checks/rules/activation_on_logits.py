"""activation-on-logits: the network's last layer is an activation before a logits loss."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import nodes_of, walk_scope, walk_tree
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
# A (log-)softmax over classes: what it receives are logits, whatever loss follows.
_SOFTMAXES = frozenset(
    {
        "torch.softmax",
        "torch.log_softmax",
        "torch.nn.functional.softmax",
        "torch.nn.functional.log_softmax",
    }
)
_LINEAR_LAYERS = frozenset({"Linear", "LazyLinear"})
_NESTED_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


class ActivationOnLogits(Rule):
    """Detects a network whose final operation is an activation (ReLU, sigmoid, tanh...) — a
    `Linear` then an activation at the end of an `nn.Sequential` bound to a plain name, or the
    value the `forward` of the module's only network returns — in a module that trains with a
    logits loss (`CrossEntropyLoss`, `BCEWithLogitsLoss`).

    Why it matters: those losses expect unbounded logits. A ReLU clips every negative logit to
    zero (classes become indistinguishable and gradients die), a sigmoid or tanh squeezes them
    into a narrow range so the softmax can never become confident: training stalls.

    Also reported, whatever the loss: an activation applied to the output of a `Linear`
    layer that then goes straight into a softmax or log-softmax (`i = F.relu(self.i3(i))`
    then `F.log_softmax(i, dim=1)` in a policy head trained with `nll_loss`, sfujim/BCQ
    `4876f7e`), nested or through a name the function binds last to the activation. Not
    reported: a hidden activation followed by another layer before the softmax, an activation
    of something other than a `Linear` output (attention scores, a convolution's features),
    a softmax over a name re-bound after the activation.

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
    triggers = Triggers((*_LOGIT_LOSSES, "softmax"))

    def applies(self, ctx: ModuleContext) -> bool:
        return any(loss in ctx.source for loss in _LOGIT_LOSSES) or "softmax" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        if "softmax" in ctx.source:
            self._activation_into_softmax(ctx)
        if not any(loss in ctx.source for loss in _LOGIT_LOSSES):
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

    def _activation_into_softmax(self, ctx: ModuleContext) -> None:
        """`F.log_softmax(F.relu(self.fc(x)))`, or the same through a name bound last to the
        activation before the softmax in the same function."""
        for function in nodes_of(ctx, ast.FunctionDef, ast.AsyncFunctionDef):
            assert isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
            bindings: dict[str, list[tuple[int, ast.expr | None]]] = {}
            softmaxes: list[ast.Call] = []
            own = [s for s in function.body if not isinstance(s, _NESTED_SCOPES)]
            for node in walk_scope(own):
                if isinstance(node, ast.Assign):
                    for target in node.targets:
                        for bound in walk_tree(target):
                            if isinstance(bound, ast.Name):
                                value = node.value if isinstance(target, ast.Name) else None
                                bindings.setdefault(bound.id, []).append((node.lineno, value))
                elif isinstance(node, (ast.AugAssign, ast.AnnAssign)) and isinstance(
                    node.target, ast.Name
                ):
                    bindings.setdefault(node.target.id, []).append((node.lineno, None))
                elif isinstance(node, ast.Call) and self._softmax_input(ctx, node) is not None:
                    softmaxes.append(node)
            for call in softmaxes:
                value = self._softmax_input(ctx, call)
                if isinstance(value, ast.Name):
                    earlier = [b for b in bindings.get(value.id, []) if b[0] < call.lineno]
                    value = max(earlier, key=lambda b: b[0])[1] if earlier else None
                if not isinstance(value, ast.Call):
                    continue
                activation = self._activation(ctx, value)
                if activation and self._of_a_linear_layer(ctx, self._activation_input(value)):
                    ctx.report(
                        self,
                        value,
                        f"the Linear layer's output goes through {activation} before "
                        f"`{ast.unparse(call.func)}`: the softmax expects raw logits, negative "
                        "or large ones are squashed and the probabilities cannot separate",
                    )

    @staticmethod
    def _softmax_input(ctx: ModuleContext, call: ast.Call) -> ast.expr | None:
        """The tensor a softmax/log-softmax call normalises, or None for any other call."""
        if ctx.call_qualname(call) in _SOFTMAXES:
            return call.args[0] if call.args else None
        func = call.func
        if not isinstance(func, ast.Attribute):
            return None
        if isinstance(func.value, ast.Name) and func.value.id == "self":
            if "softmax" not in func.attr.lower():
                return None
            # self.log_softmax(x) where self.log_softmax = nn.LogSoftmax(dim=1)
            layers = {nn_layer(ctx, value) for value in ctx.flow.definitions(func)}
            if layers & {"Softmax", "LogSoftmax"} and call.args:
                return call.args[0]
            return None
        if func.attr in ("softmax", "log_softmax") and ctx.qualname(func) is None:
            return func.value  # x.softmax(dim=-1)
        return None

    @staticmethod
    def _activation_input(call: ast.Call) -> ast.expr | None:
        if call.args:
            return call.args[0]
        func = call.func
        return func.value if isinstance(func, ast.Attribute) else None  # x.relu()

    @staticmethod
    def _of_a_linear_layer(ctx: ModuleContext, node: ast.expr | None) -> bool:
        """`self.fc(x)` where `self.fc = nn.Linear(...)`, or `nn.Linear(...)(x)`."""
        if not isinstance(node, ast.Call):
            return False
        if nn_layer(ctx, node.func) in _LINEAR_LAYERS:
            return True
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id == "self"
        ):
            return any(
                nn_layer(ctx, value) in _LINEAR_LAYERS for value in ctx.flow.definitions(func)
            )
        return False

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
