"""threshold-dependent-metric-only: only accuracy/F1 reported, no ranking metric."""

from __future__ import annotations

from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.models import Severity

_THRESHOLD = frozenset(
    {
        "sklearn.metrics.accuracy_score",
        "sklearn.metrics.f1_score",
        "sklearn.metrics.precision_score",
        "sklearn.metrics.recall_score",
        "torchmetrics.Accuracy",
        "torchmetrics.F1Score",
        "torchmetrics.classification.BinaryAccuracy",
        "torchmetrics.classification.BinaryF1Score",
    }
)
_RANKING = (
    "roc_auc",
    "average_precision",
    "precision_recall_curve",
    "roc_curve",
    "log_loss",
    "brier",
    "AUROC",
    "AveragePrecision",
    "calibration",
)


class ThresholdDependentMetricOnly(Rule):
    """Detects a module that evaluates a classifier only with threshold-dependent metrics
    (sklearn `accuracy_score`/`f1_score`/`precision_score`/`recall_score`, torchmetrics
    `Accuracy`/`F1Score`) and never with a threshold-free one (ROC-AUC, average precision,
    PR/ROC curves, log-loss, Brier score). Opt-in: multi-class and regression code often has
    good reasons.

    Why it matters: a thresholded metric depends on an arbitrary cut-off (0.5) and hides how
    well the model ranks positives; on imbalanced data accuracy can be high for a useless
    model (dslinter W5519-W5521, "threshold-dependent validation").

    Example:
        print("F1:", f1_score(y_true, probs > 0.5))

    Fix: also report `roc_auc_score(y_true, probs)` and `average_precision_score(y_true,
    probs)`, and choose the threshold on validation data.
    """

    id = "threshold-dependent-metric-only"
    point = 3
    severity = Severity.LOW
    title = "Only threshold-dependent metrics"
    items: ClassVar[tuple[str, ...]] = ("3.4",)
    tier = "opt-in"

    def applies(self, ctx: ModuleContext) -> bool:
        return ctx.flow.imports("sklearn.metrics", "torchmetrics")

    def finish(self, ctx: ModuleContext) -> None:
        text = ctx.source
        if not any(w in text for w in ("_score", "Accuracy", "F1Score")):
            return
        if any(w in text for w in _RANKING):
            return
        calls = ctx.flow.calls_to(_THRESHOLD)
        if calls:
            first = min(calls, key=lambda c: (c.lineno, c.col_offset))
            name = (ctx.flow.qualname_of(first) or "").rsplit(".", 1)[-1]
            ctx.report(
                self,
                first,
                f"`{name}` is the only kind of metric here: add a threshold-free one "
                "(ROC-AUC, average precision)",
            )
