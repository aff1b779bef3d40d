"""no-group-metrics: sensitive attributes are present but metrics are only aggregate."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.models import Severity

_SENSITIVE = re.compile(
    r"^(gender|sex|race|ethnicity|ethnic_group|religion|age|age_group|disability|"
    r"nationality|marital_status|sexual_orientation|skin_tone)$",
    re.IGNORECASE,
)
_METRIC_WORDS = ("accuracy", "f1_score", "precision", "recall", "roc_auc", "confusion_matrix")
_GROUPED_WORDS = ("groupby", "metricframe", "fairlearn", "aif360", "per_group", "by_group")


class NoGroupMetrics(Rule):
    """Detects a module that reads a sensitive attribute column (`"gender"`, `"sex"`,
    `"race"`, `"age"`, `"ethnicity"`, `"religion"`, ... as a subscript or column name) and
    computes evaluation metrics, but never disaggregates them (`groupby`, fairlearn
    `MetricFrame`, aif360, per-group loops named as such). Opt-in: a column name says
    little about how the data is used.

    Why it matters: an aggregate score can hide a model that fails one group; responsible
    deployment requires per-group error rates (and often parity metrics) before release.

    Example:
        df = pd.read_csv("patients.csv"); groups = df["sex"]
        print(accuracy_score(y_test, preds))

    Fix: report metrics per group, e.g. `MetricFrame(metrics=accuracy_score, y_true=y,
    y_pred=p, sensitive_features=df["sex"]).by_group`, and record them in the model card.
    """

    id = "no-group-metrics"
    point = 12
    severity = Severity.LOW
    title = "No per-group metrics"
    items: ClassVar[tuple[str, ...]] = ("12.1",)
    tier = "opt-in"

    def applies(self, ctx: ModuleContext) -> bool:
        return _mentions(ctx.source, _METRIC_WORDS)

    def finish(self, ctx: ModuleContext) -> None:
        text = ctx.source
        if not _mentions(text, _METRIC_WORDS) or _mentions(text, _GROUPED_WORDS):
            return
        for node in ctx.flow.nodes(ast.Subscript):
            key = node.slice
            if (
                isinstance(key, ast.Constant)
                and isinstance(key.value, str)
                and _SENSITIVE.match(key.value)
            ):
                ctx.report(
                    self,
                    node,
                    f"the data has the sensitive attribute {key.value!r} but metrics are "
                    "only aggregate: report them per group",
                    data={"attribute": key.value},
                )
                return


def _mentions(text: str, words: tuple[str, ...]) -> bool:
    lowered = text.lower()
    return any(word in lowered for word in words)
