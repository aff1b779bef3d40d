"""What reaches a loss's prediction slot from outside the function that calls the loss.

Two hops the activation rules (a softmax into cross-entropy, a sigmoid into a logits loss)
share: a loss helper's parameter filled by its callers (`def loss_fn(outputs, targets):
return nn.BCEWithLogitsLoss()(outputs, targets)` called as `loss_fn(model(x), y)`), and a
model that arrives as a parameter of a module-level function (`def train_fn(loader, model,
...)` called from another file with `model = BERTBaseUncased()`), whose class the project
pass looks up.
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

from torchdoctor.agent.checks.analysis.project import parameter_of

if TYPE_CHECKING:
    from torchdoctor.agent.checks.base import ModuleContext


def loss_inputs(
    ctx: ModuleContext, node: ast.Call, received: ast.expr
) -> list[tuple[ast.expr, ast.Call]]:
    """(what reaches the loss call `node`, where it is handed to the loss): its own input,
    and when that input is a parameter of a loss helper of the module (`def
    auxiliary_loss(self, y_hat, y): return F.cross_entropy(y_hat, y)`), what each call of
    the helper passes for it (`self.auxiliary_loss(pred_label, labels)`), at that call."""
    found: list[tuple[ast.expr, ast.Call]] = [(received, node)]
    if not isinstance(received, ast.Name):
        return found
    for passed in ctx.calls.arguments_for(received):
        site = ctx.parents.get(passed)
        while isinstance(site, ast.keyword | ast.Starred):
            site = ctx.parents.get(site)
        if isinstance(site, ast.Call):
            found.append((passed, site))
    return found


def model_parameter(ctx: ModuleContext, value: ast.expr) -> tuple[str, str, int | None] | None:
    """(qualified function, parameter, position) for the first model whose output `value`
    is that arrives as a parameter of a module-level function or method (`outputs =
    model(ids)` in `def train_fn(data_loader, model, ...)`): the classes callers in other
    files pass for it are the project pass's to judge."""
    for producer in ctx.flow.producers(value):
        func = producer.func
        if isinstance(func, ast.Attribute) and func.attr == "forward":
            func = func.value
        found = parameter_of(ctx, func)
        if found is not None:
            return found
    return None
