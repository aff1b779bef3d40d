"""logprobs-of-detached-input: a log-probability helper detaches the scores it is given."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_LOGPROB_FUNCTION = re.compile(
    r"^_?((get|compute|calc|calculate|eval|evaluate)_)?log_?probs?(_\w+)?$", re.IGNORECASE
)
_LOG_OR_SOFTMAX = re.compile(r"log|softmax", re.IGNORECASE)
_GRAD_OFF = re.compile(r"no_grad|inference_mode")


class LogprobsOfDetachedInput(Rule):
    """Detects a log-probability helper (`get_logprobs`, `log_prob`, `compute_log_probs`)
    that detaches the scores it is given (`logits = policy_outputs.clone().detach()`, or
    `.data`) and returns log-probabilities computed from them (through `log_softmax`, `log`,
    a distribution's `log_prob`).

    Why it matters: log-probabilities are computed to be differentiated: the policy-gradient,
    trajectory-balance or likelihood loss built on them must send gradients back to the model
    that produced the scores. Detached inside the helper, every caller's loss is a constant
    for that model: training runs, logs a loss, and the policy never learns.
    alexhernandezgarcia/gflownet fixed exactly this (`7ea8f9d`: `logits =
    policy_outputs.clone().detach()` -> `policy_outputs.clone()` in `get_logprobs`).

    Not reported: helpers under `no_grad`/`inference_mode` (their callers want numbers), a
    detached value that is not one of the helper's parameters (a model it calls itself, whose
    output is a fixed target), parameters detached for indexing or masking only (the
    returned value is not computed from them), and functions not named for log-probabilities.

    Example:
        def get_logprobs(self, policy_outputs, actions, mask):
            logits = policy_outputs.clone().detach()
            logits[mask] = -torch.inf
            return self.logsoftmax(logits)[torch.arange(len(actions)), actions]

    Fix: keep the graph (`logits = policy_outputs.clone()`) and detach at the call sites that
    need numbers (`old_logprobs = get_logprobs(...).detach()`).
    """

    id = "logprobs-of-detached-input"
    point = 4
    severity = Severity.HIGH
    title = "Log-probability helper detaches the scores it is given"
    items: ClassVar[tuple[str, ...]] = ("4.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.FunctionDef,)
    triggers = Triggers(all_of=(("log",), ("detach(", ".data")))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.FunctionDef)
        if not _LOGPROB_FUNCTION.match(node.name):
            return
        if any(_GRAD_OFF.search(ast.unparse(d)) for d in node.decorator_list):
            return
        params = {
            a.arg for a in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
        } - {"self", "cls"}
        if not params:
            return
        sources = _sources(node)
        returned = [
            n.value for n in walk_tree(node) if isinstance(n, ast.Return) and n.value is not None
        ]
        if not returned:
            return
        for statement in node.body:
            for inner in walk_tree(statement):
                if not (isinstance(inner, ast.Assign) and len(inner.targets) == 1):
                    continue
                target = inner.targets[0]
                if not isinstance(target, ast.Name):
                    continue
                cut = _detached_parameter(inner.value, params)
                if cut is None:
                    continue
                if not any(_reaches(value, target.id, sources) for value in returned):
                    continue
                if not _through_log(node, target.id, sources):
                    continue
                ctx.report(
                    self,
                    inner,
                    f"`{node.name}` detaches `{cut}` before computing the log-probabilities it "
                    "returns: a loss built on them sends no gradient to the model that produced "
                    f"`{cut}`. Keep the graph here and detach at the call sites that need "
                    "numbers.",
                )
                return


def _detached_parameter(value: ast.expr, params: set[str]) -> str | None:
    """`p.detach()`, `p.clone().detach()`, `p.detach().clone()`, `p.data` for a parameter
    `p`: its name."""
    detached = False
    expr = value
    while True:
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Attribute):
            if expr.func.attr == "detach":
                detached = True
            elif expr.func.attr not in ("clone", "float", "contiguous", "to"):
                return None
            expr = expr.func.value
        elif isinstance(expr, ast.Attribute) and expr.attr == "data":
            detached = True
            expr = expr.value
        else:
            break
    if detached and isinstance(expr, ast.Name) and expr.id in params:
        return expr.id
    return None


def _sources(fn: ast.FunctionDef) -> dict[str, set[str]]:
    """For each name assigned in `fn`, the names its values are computed from."""
    found: dict[str, set[str]] = {}
    for node in walk_tree(fn):
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            used = {n.id for n in walk_tree(node.value) if isinstance(n, ast.Name)}
            for target in targets:
                for name in walk_tree(target):
                    if isinstance(name, ast.Name) and isinstance(name.ctx, ast.Store):
                        found.setdefault(name.id, set()).update(used)
    return found


def _reaches(expr: ast.expr, name: str, sources: dict[str, set[str]]) -> bool:
    """Whether `expr` is computed from `name`, through the function's assignments."""
    seen: set[str] = set()
    pending = [n.id for n in walk_tree(expr) if isinstance(n, ast.Name)]
    while pending:
        current = pending.pop()
        if current == name:
            return True
        if current in seen:
            continue
        seen.add(current)
        pending.extend(sources.get(current, ()))
    return False


def _through_log(fn: ast.FunctionDef, name: str, sources: dict[str, set[str]]) -> bool:
    """A log or softmax call of `fn` takes a value computed from `name`."""
    return any(
        isinstance(node, ast.Call)
        and _LOG_OR_SOFTMAX.search(ast.unparse(node.func))
        and any(_reaches(arg, name, sources) for arg in node.args)
        for node in walk_tree(fn)
    )
