"""Rules built on the semantic model: the new bug classes, and the cases that cross functions
and files (a model defined in another file, an optimizer stepped in a helper).

Fixtures live in tests/fixtures/rules/<rule-id>/: `positive_*` cases mark each expected finding
with `# expect: <rule-id>`; `negative_*` cases are near misses taken from real code shapes that
must stay silent. A case may be a folder (a small project: the rule sees every file at once).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.rule_fixtures import assert_reports_exactly_the_marked_lines
from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.checks.registry import rule_doc, rules_by_id
from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.models import FixTarget

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rules"
NEW_RULES: tuple[str, ...] = (
    "clip-grad-order",
    "nll-loss-input",
    "rnn-hidden-not-detached",
    "buffer-updated-with-graph",
    "epoch-metric-not-reset",
    "batch-scheduler-per-epoch",
    "inplace-param-update-with-grad",
    "cudnn-benchmark-with-determinism",
    "train-loader-no-shuffle",
    "log-of-probabilities",
    "dead-tensor-store",
    "argmax-without-dim",
    "synchronize-in-step",
    "torch-load-no-map-location",
    "factory-without-device-in-step",
    "sigmoid-into-logits-loss",
    "detached-loss-input",
    "half-model-float-input",
    "reduction-over-batch-dim",
    "leak-target-feature",
    "loss-reduced-before-weighting",
    "sequence-batch-axis",
    "softmax-without-dim",
    "module-shallow-copy",
    "norm-positional-eps",
    "functional-dropout-always-on",
    "scalar-loss-indexed",
    "flatten-view-of-transposed",
    "alias-mutated-in-place",
    "accumulator-overwritten-after-loop",
    "parameter-moved-after-wrapping",
    "lambda-lr-absolute-rate",
    "lambda-branch-returns-function",
    "factory-joined-with-device-tensor",
    "tensor-move-discarded",
    "mean-over-wrong-count",
    "optimizer-params-reused",
    "checkpoint-path-reused",
    "channels-flattened-without-permute",
    "target-network-not-synced",
    "inplace-on-saved-tensor",
    "detach-inplace-on-argument",
    "tensor-attribute-not-buffer",
    "norm-momentum-inverted",
    "accumulation-step-inverted",
    "backward-after-step",
    "optimizer-state-before-move",
    "loss-averaged-twice",
    "vocabulary-in-set-order",
    "output-projection-unaligned",
    "attention-heads-one-by-one",
    "kl-div-mean-reduction",
    "argparse-type-bool",
    "attribute-set-never-read",
    "backward-gradient-is-loss",
    "module-method-shadowed",
    "gradient-penalty-norm-unflattened",
    "layer-built-in-forward",
    "flag-store-false-inverted",
    "in-place-result-assigned",
    "arguments-swapped",
    "integer-tensor-requires-grad",
    "path-placeholder-unfilled",
    "attention-scaled-by-model-dim",
    "numpy-of-graph-tensor",
    "norm-layer-shared",
    "collected-list-unread",
    "override-name-misspelt",
    "super-not-called",
    "lambda-reads-rebound-global",
    "coefficient-applied-twice",
    "normalize-channel-count",
    "indexed-config-repeated",
    "loss-from-other-model",
    "optimizer-lr-attribute-set",
    "layer-size-true-division",
    "config-field-annotation-mismatch",
    "backward-ignores-grad-output",
    "trainable-tensor-not-parameter",
    "label-vector-column-index",
    "index-true-division",
    "eval-loader-train-batch-size",
    "param-group-without-params",
    "loop-variable-after-loop",
    "scaled-zeros",
    "config-value-for-other-keyword",
    "batch-input-not-moved",
    "factory-keyword-on-op",
    "loop-variable-rebound",
    "parameter-ignored",
    "manual-batches-unshuffled",
    "advantage-not-detached",
    "accumulation-step-every-batch",
    "eval-loader-drop-last",
    "parameter-uninitialised",
    "init-flag-not-buffer",
    "logprobs-of-detached-input",
    "layer-added-after-move",
    "reduced-without-keepdim",
    "precedence-hidden-by-spacing",
    "frozen-model-in-train-mode",
    "kl-log-ratio-inverted",
    "return-in-training-loop",
    "loss-truncated-to-int",
    "collective-on-python-number",
    "mask-fill-near-zero",
    "loss-targets-not-shifted",
    "lr-schedule-compounds",
    "backward-before-training-loop",
)
# Rules whose own test module reads single files only: their folder cases run here.
CROSS_FILE = (
    "double-softmax",
    "divide-by-std-no-eps",
    "leak-preprocessing",
    "eval-without-eval-mode",
    "loss-graph-accumulation",
    "metric-batch-mean-bias",
    "train-mode-not-restored",
    "validation-with-grad",
)


def _cases() -> list[object]:
    cases = []
    for rule in (*NEW_RULES, *CROSS_FILE):
        for case in sorted((FIXTURES / rule).iterdir()):
            if rule in CROSS_FILE and not case.is_dir():
                continue  # single-file cases of older rules run in their own test module
            if case.name.startswith(("positive_", "negative_")):
                cases.append(pytest.param(rule, case, id=f"{rule}/{case.stem}"))
    return cases


@pytest.mark.parametrize(("rule", "case"), _cases())
def test_rule_reports_exactly_the_marked_lines(rule: str, case: Path) -> None:
    assert_reports_exactly_the_marked_lines(rule, case, workers=1)


@pytest.mark.parametrize("rule", NEW_RULES)
def test_rule_is_documented_with_its_precision_risks(rule: str) -> None:
    doc = rule_doc(rules_by_id()[rule])
    assert doc.startswith("Detects"), f"{rule}: the docstring must open with what it detects"
    for part in ("Why it matters:", "Not reported", "Example:", "Fix:"):
        assert part in doc, f"{rule}: docstring lacks '{part}'"
    names = [p.name for p in (FIXTURES / rule).iterdir()]
    assert any(n.startswith("positive_") for n in names), f"{rule}: no positive fixture"
    assert any(n.startswith("negative_") for n in names), f"{rule}: no negative fixture"
    cls = rules_by_id()[rule]
    assert cls.items and all(item.split(".")[0] == str(cls.point) for item in cls.items)


@pytest.mark.parametrize("rule", [r for r in NEW_RULES if codemod_for(r) is not None])
def test_codemod_applies_at_the_anchor_the_rule_emitted(rule: str) -> None:
    """The codemod reads where to act from the finding's data, not from a second recogniser."""
    folder = FIXTURES.parent / "fixes" / rule
    before = (folder / "before.py").read_text()
    findings = [
        f
        for f in analyse_files(
            [("before.py", before)], EngineConfig(select=frozenset({rule}))
        ).all_findings()
        if f.rule == rule
    ]
    assert len(findings) == 1
    found = findings[0]
    target = FixTarget(
        rule=rule, file="before.py", line=found.line, end_line=found.end_line, data=found.data
    )
    codemod = codemod_for(rule)
    assert codemod is not None
    assert codemod.transform(before, target) == (folder / "after.py").read_text()
