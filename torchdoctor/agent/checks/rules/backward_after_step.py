"""backward-after-step: a loss backpropagated after an optimizer step changed the weights its
graph was built with."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.gradmode import grad_may_be_off
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import (
    is_backward_call,
    is_optimizer_step,
    named_calls,
    walk_scope,
    walk_tree,
)
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

# Calls that cut a value from its graph: a module output under them carries no weight.
_CUTS = frozenset({"detach", "item", "tolist", "numpy", "detach_"})


class BackwardAfterStep(Rule):
    """Detects, in one function, a loss computed through a model, then an `optimizer.step()`
    for that model's parameters, then `loss.backward()` on the loss computed before the step:
    an actor loss built through the critic and backpropagated after the critic's update (SAC,
    DDPG), or a generator loss built through the discriminator and backpropagated after the
    discriminator's step. The optimizer is matched to the model through the `.parameters()`
    it was built from (`self.qf_opt = Adam(self.qf.parameters())`).

    Why it matters: `step()` updates the weights in place, but the loss's graph saved the old
    weights for its backward pass. Since PyTorch 1.5 the backward fails with "one of the
    variables needed for gradient computation has been modified by an inplace operation";
    before, the gradients were computed with stale weights without notice.

    Not reported: losses computed after the step, a step and a backward in the two branches
    of one `if`, a model reached only through `.detach()` (also a name detached where the
    loss reads it: `value_criterion(v, next_value.detach())`) or under `torch.no_grad()`,
    optimizers whose parameters are not traced to a model the loss went through, and
    backward calls in another function than the step.

    Example:
        policy_loss = (alpha * log_pi - self.qf(obs, new_actions)).mean()
        qf_loss = F.mse_loss(self.qf(obs, actions), q_target)
        self.qf_optimizer.zero_grad()
        qf_loss.backward()
        self.qf_optimizer.step()
        self.policy_optimizer.zero_grad()
        policy_loss.backward()

    Fix: backpropagate (and step) the loss that goes through the model before that model's
    step, or compute it again after the step.
    """

    id = "backward-after-step"
    point = 1
    severity = Severity.HIGH
    title = "Loss backpropagated after a step changed the weights its graph saved"
    items: ClassVar[tuple[str, ...]] = ("1.3",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.FunctionDef, ast.AsyncFunctionDef)
    triggers = Triggers(("parameters(",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        if "backward" not in ctx.source or "step" not in ctx.source:
            return  # a finding needs a `.backward()` (or `.manual_backward()`) and a `.step()`
        steps: list[ast.Call] = []
        backwards: list[tuple[ast.Call, ast.Name]] = []
        for sub in named_calls(ctx, node.body):  # both kinds are calls of an attribute
            if is_optimizer_step(sub):
                steps.append(sub)
            elif is_backward_call(sub):
                loss = _loss_of(sub)
                if loss is not None:
                    backwards.append((sub, loss))
        if not steps or not backwards:
            return
        for backward, loss in backwards:
            bound = _last_binding(node, loss.id, backward.lineno)
            if bound is None:
                continue
            for step in steps:
                if not (bound.lineno < step.lineno < backward.lineno):
                    continue
                if _exclusive(ctx, step, backward):
                    continue  # `if shared: opt.step() else: loss.backward()`
                if any(
                    bound.lineno < b.lineno < step.lineno and other.id == loss.id
                    for b, other in backwards
                ):
                    continue  # this loss was already backpropagated before the step
                models = _optimized_models(ctx, step)
                through = next(
                    (m for m in models if _built_through(ctx, bound.value, m, loss)), None
                )
                if through is None:
                    continue
                receiver = (
                    ast.unparse(step.func.value)
                    if isinstance(step.func, ast.Attribute)
                    else "optimizer"
                )
                ctx.report(
                    self,
                    backward,
                    f"`{loss.id}` was computed through `{through}` before "
                    f"`{receiver}.step()` updated its weights in place: this backward runs on "
                    "a graph that saved the old weights (PyTorch >= 1.5 raises 'modified by an "
                    "inplace operation'; older versions used stale weights); backpropagate it "
                    "before that step, or compute it again after",
                    data={"loss": loss.id, "model": through},
                )
                break


def _exclusive(ctx: ModuleContext, step: ast.Call, backward: ast.Call) -> bool:
    """The step and the backward sit in the two branches of one `if`: never both run."""

    def within(stmts: list[ast.stmt], node: ast.Call) -> bool:
        return bool(stmts) and stmts[0].lineno <= node.lineno <= (stmts[-1].end_lineno or 0)

    for anc in ctx.ancestors(step):
        if isinstance(anc, ast.If):
            if within(anc.body, step) and within(anc.orelse, backward):
                return True
            if within(anc.orelse, step) and within(anc.body, backward):
                return True
    return False


def _loss_of(call: ast.Call) -> ast.Name | None:
    """`loss` of `loss.backward()` or `scaler.scale(loss).backward()`."""
    if not isinstance(call.func, ast.Attribute):
        return None
    receiver = call.func.value
    if (
        isinstance(receiver, ast.Call)
        and isinstance(receiver.func, ast.Attribute)
        and receiver.func.attr == "scale"
        and receiver.args
    ):
        receiver = receiver.args[0]
    return receiver if isinstance(receiver, ast.Name) else None


def _last_binding(fn: ast.AST, name: str, before: int) -> ast.Assign | None:
    found: ast.Assign | None = None
    for node in walk_scope(getattr(fn, "body", [])):
        if (
            isinstance(node, ast.Assign)
            and node.lineno < before
            and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
            and (found is None or node.lineno > found.lineno)
        ):
            found = node
        elif (
            isinstance(node, ast.AugAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == name
            and node.lineno < before
            and found is not None
            and node.lineno > found.lineno
        ):
            return None  # accumulated in a loop: where its graph was built is unclear
    return found


def _optimized_models(ctx: ModuleContext, step: ast.Call) -> list[str]:
    """The models (`self.qf1`) whose `.parameters()` built the optimizer stepped here
    (memoised per module and optimizer: each function that steps it asks, and the answer is
    a walk of the whole module)."""
    if not isinstance(step.func, ast.Attribute):
        return []
    receiver = ast.unparse(step.func.value)
    memo = ctx.memo_table("backward_after_step.optimized_models")
    if receiver not in memo:
        memo[receiver] = _models_building(ctx, receiver)
    found: list[str] = memo[receiver]
    return found


def _models_building(ctx: ModuleContext, receiver: str) -> list[str]:
    """The models whose `.parameters()` are given to the optimizer named `receiver` where it
    is built, anywhere in the module."""
    models: list[str] = []
    for node in walk_tree(ctx.tree):
        if not isinstance(node, ast.Assign) or not isinstance(node.value, ast.Call):
            continue
        if not any(ast.unparse(t) == receiver for t in node.targets):
            continue
        given = [*node.value.args[:1], *(k.value for k in node.value.keywords if k.arg == "params")]
        for arg in given:
            for sub in walk_tree(arg):
                if (
                    isinstance(sub, ast.Call)
                    and isinstance(sub.func, ast.Attribute)
                    and sub.func.attr == "parameters"
                ):
                    model = ast.unparse(sub.func.value)
                    if model not in models:
                        models.append(model)
    return models


def _built_through(ctx: ModuleContext, value: ast.expr, model: str, loss: ast.Name) -> bool:
    """`value` (what the loss was bound to) derives from a call of `model`, or of one of its
    methods, that autograd recorded and that no `.detach()` cut."""

    def recorded_call(node: ast.AST) -> bool:
        if not isinstance(node, ast.Call):
            return False
        func = node.func
        callee = ast.unparse(func)
        if callee != model and not callee.startswith(model + "."):
            return False
        if grad_may_be_off(ctx, node):
            return False
        return not any(
            isinstance(anc, ast.Call)
            and isinstance(anc.func, ast.Attribute)
            and anc.func.attr in _CUTS
            for anc in ctx.ancestors(node)
            if isinstance(anc, ast.Call)
        )

    if any(recorded_call(n) for n in walk_tree(value)):
        return True
    cut = {  # names read under a cut (`value_criterion(v, next_value.detach())`)
        id(n)
        for call in walk_tree(value)
        if isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and call.func.attr in _CUTS
        for n in walk_tree(call.func.value)
    }
    return any(
        ctx.flow.derives_from(name, recorded_call)
        for name in walk_tree(value)
        if isinstance(name, ast.Name) and name.id != loss.id and id(name) not in cut
    )
