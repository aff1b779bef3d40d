"""Every rule of checklist points 4-10 against its fixtures: exact (rule, line) pairs.

Fixtures live in tests/fixtures/rules/<rule-id>/: `positive_*.py` files mark each expected
finding with `# expect: <rule-id>` on its line; `negative_*.py` files are near misses that must
stay silent. A case may be a folder of several files (project-level rules).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.rule_fixtures import assert_reports_exactly_the_marked_lines
from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.checks.registry import rule_doc, rules_by_id

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rules"

RULES = (
    # point 4
    "zero-grad-missing",
    "zero-grad-order",
    "scheduler-before-optimizer",
    "epoch-scheduler-per-batch",
    "grad-accum-no-scale",
    "unused-layer",
    "bias-before-norm",
    "missing-nonlinearity",
    "activation-on-logits",
    "high-dropout",
    "adam-with-weight-decay",
    "python-loop-over-tensor",
    "lr-range",
    "even-kernel",
    # point 5
    "no-torch-seed",
    "dataloader-worker-seed",
    "sklearn-random-state",
    "checkpoint-incomplete",
    "no-deterministic-algorithms",
    "no-ml-tests",
    # point 6
    "validation-with-grad",
    "host-sync-in-step",
    "pin-memory-off",
    "persistent-workers-off",
    "zero-grad-set-to-none-false",
    "cpu-then-move",
    "unfused-optimizer",
    "dataparallel-not-ddp",
    "empty-cache-in-loop",
    "float64-on-gpu",
    "no-amp",
    "tf32-off",
    "ddp-accum-no-sync",
    "ddp-sampler-no-set-epoch",
    "ddp-metric-rank-local",
    "ddp-save-every-rank",
    "cudnn-benchmark-off",
    "dataloader-sync",
    "conv-without-channels-last",
    # point 7
    "inference-no-eval",
    "no-grad-not-inference-mode",
    "onnx-legacy-exporter",
    "torchscript-for-deploy",
    "legacy-quantization",
    # point 8
    "no-torch-compile",
    "per-item-file-io",
    "dim-not-multiple-of-64",
    "per-sample-inference",
    "checkpoint-too-often",
    # point 9
    "hardcoded-paths",
    "hardcoded-hparams",
    "god-function",
    "no-main-guard-workers",
    # point 10
    "direct-forward-call",
    "tensor-constructor",
    "type-cast-legacy",
    "data-attribute-idiom",
    "torchvision-import-style",
    "magic-numbers",
)


def _cases() -> list[object]:
    cases = []
    for rule in RULES:
        folder = FIXTURES / rule
        for case in sorted(folder.iterdir()) if folder.is_dir() else []:
            if case.name.startswith(("positive_", "negative_")):
                cases.append(pytest.param(rule, case, id=f"{rule}/{case.stem}"))
    return cases


@pytest.mark.parametrize(("rule", "case"), _cases())
def test_rule_reports_exactly_the_marked_lines(rule: str, case: Path) -> None:
    assert_reports_exactly_the_marked_lines(rule, case)


@pytest.mark.parametrize("rule", RULES)
def test_rule_has_positive_and_negative_fixtures(rule: str) -> None:
    names = [p.name for p in (FIXTURES / rule).iterdir()]
    assert any(n.startswith("positive_") for n in names), f"{rule}: no positive fixture"
    assert any(n.startswith("negative_") for n in names), f"{rule}: no negative fixture"


@pytest.mark.parametrize("rule", RULES)
def test_rule_docstring_has_what_why_example_fix(rule: str) -> None:
    doc = rule_doc(rules_by_id()[rule])
    assert doc.startswith("Detects"), f"{rule}: the docstring must open with what it detects"
    for part in ("Why it matters:", "Example:", "Fix:"):
        assert part in doc, f"{rule}: docstring lacks '{part}'"


def test_rule_metadata_is_consistent() -> None:
    points = {rules_by_id()[r].point for r in RULES}
    assert points <= set(range(4, 11))
    for rule in RULES:
        cls = rules_by_id()[rule]
        assert cls.items and all(item.split(".")[0] == str(cls.point) for item in cls.items)


SKELETON = {
    # id: (point, severity) — other components depend on these detectors by id
    "validation-with-grad": (6, "medium"),
    "host-sync-in-step": (6, "medium"),
    "no-torch-seed": (5, "medium"),
    "direct-forward-call": (10, "low"),
    "inference-no-eval": (7, "high"),
    "zero-grad-order": (4, "high"),
    "scheduler-before-optimizer": (4, "medium"),
}


@pytest.mark.parametrize("rule", sorted(SKELETON))
def test_walking_skeleton_detectors_keep_their_id_point_and_severity(rule: str) -> None:
    cls = rules_by_id()[rule]
    assert (cls.point, cls.severity.value) == SKELETON[rule]
    assert cls.tier == "default"


def test_opt_in_rules_run_only_when_selected() -> None:
    source = "from torch import nn\n\ndrop = nn.Dropout(0.9)\n"
    default = analyse_files([("m.py", source)])
    selected = analyse_files([("m.py", source)], EngineConfig(select=frozenset({"high-dropout"})))
    assert "high-dropout" not in {f.rule for f in default.all_findings()}
    assert [f.line for f in selected.all_findings() if f.rule == "high-dropout"] == [3]


def test_global_random_draws_in_workers_are_reported_only_before_torch_1_9() -> None:
    source = (
        "import numpy as np\n"
        "from torch.utils.data import DataLoader, Dataset\n"
        "class Noisy(Dataset):\n"
        "    def __len__(self):\n"
        "        return 100\n"
        "    def __getitem__(self, i):\n"
        "        return np.random.rand(3) + i\n"
        "loader = DataLoader(Noisy(), batch_size=8, shuffle=True, num_workers=4)\n"
    )

    def lines(target: tuple[int, int]) -> list[int]:
        config = EngineConfig(select=frozenset({"dataloader-worker-seed"}), target_torch=target)
        found = analyse_files([("m.py", source)], config).all_findings()
        return [f.line for f in found if f.rule == "dataloader-worker-seed"]

    assert lines((1, 8)) == [8]
    assert lines((1, 9)) == []
    assert lines((2, 5)) == []


@pytest.mark.parametrize(
    "name", ["positive_dropout_never_applied.py", "positive_loss_modules_never_used.py"]
)
def test_unused_parameter_free_layer_is_said_never_applied(name: str) -> None:
    case = FIXTURES / "unused-layer" / name
    config = EngineConfig(select=frozenset({"unused-layer"}))
    found = analyse_files([(case.name, case.read_text())], config).all_findings()
    messages = [f.message for f in found if f.rule == "unused-layer"]
    assert len(messages) == 1
    assert "never applied" in messages[0] and "parameters" not in messages[0]
