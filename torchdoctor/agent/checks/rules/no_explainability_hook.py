"""no-explainability-hook: a classifier is trained with no attribution path anywhere."""

from __future__ import annotations

import ast
from typing import Any, ClassVar

from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.models import Severity

_CLASSIFIER_LOSSES = frozenset(
    {
        "torch.nn.CrossEntropyLoss",
        "torch.nn.BCEWithLogitsLoss",
        "torch.nn.BCELoss",
        "torch.nn.NLLLoss",
        "torch.nn.functional.cross_entropy",
        "torch.nn.functional.binary_cross_entropy_with_logits",
        "torch.nn.functional.nll_loss",
    }
)
_EXPLAINERS = (
    "captum",
    "shap",
    "lime",
    "integratedgradients",
    "gradcam",
    "grad_cam",
    "saliency",
    "attribution",
)
_FACT = "no-explainability-hook"


class NoExplainabilityHook(Rule):
    """Detects a project that trains a classifier (a classification loss in a training
    loop) while no module uses an attribution tool (Captum, SHAP, LIME, Grad-CAM, saliency
    or attribution code). Project-level and opt-in: advisory, it matters for high-stakes
    uses.

    Why it matters: without attributions nobody can check what the model relies on
    (spurious features, leakage through IDs or watermarks, protected attributes), and many
    regulated domains require explanations of individual decisions.

    Example:
        criterion = nn.CrossEntropyLoss()
        ...  # training loop, and no captum/shap anywhere in the repository

    Fix: add an explanation path, e.g. Captum `IntegratedGradients(model).attribute(x,
    target=pred)`, and review attributions on a sample of validation errors.
    """

    id = "no-explainability-hook"
    point = 12
    severity = Severity.INFO
    title = "No explainability hook"
    items: ClassVar[tuple[str, ...]] = ("12.2",)
    tier = "opt-in"

    def applies(self, ctx: ModuleContext) -> bool:
        return "backward" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        lowered = ctx.source.lower()
        explains = any(word in lowered for word in _EXPLAINERS)
        loss = None
        if "backward" in ctx.source and ctx.loops.training_loops:
            loss = next(
                (
                    c
                    for c in ctx.flow.nodes(ast.Call)
                    if ctx.flow.qualname_of(c) in _CLASSIFIER_LOSSES
                ),
                None,
            )
        if loss is None and not explains:
            return
        ctx.facts[_FACT] = {
            "explains": explains,
            "loss": None
            if loss is None
            else {
                "line": loss.lineno,
                "code": ctx.lines[loss.lineno - 1],
                "excerpt": ctx.excerpt(loss.lineno, loss.lineno),
            },
        }

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        entries = {path: f[_FACT] for path, f in facts.items() if _FACT in f}
        if any(entry["explains"] for entry in entries.values()):
            return []
        trained = sorted((path, e["loss"]) for path, e in entries.items() if e["loss"])
        if not trained:
            return []
        path, loss = trained[0]
        return [
            RawFinding(
                rule=cls.id,
                file=path,
                line=loss["line"],
                end_line=loss["line"],
                code=loss["code"],
                message="a classifier is trained but no module explains its predictions "
                "(Captum, SHAP, Grad-CAM)",
                severity=cls.severity,
                excerpt=loss["excerpt"],
            )
        ]
