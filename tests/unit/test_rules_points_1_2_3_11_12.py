"""Every rule of checklist points 1, 2, 3, 11 and 12 against its fixtures.

Fixtures live in tests/fixtures/rules/<rule-id>/: each `positive_*.py` marks the lines where
the rule must report with `# expect: <rule-id>`; each `negative_*.py` is a near miss on which
the rule must stay silent. The engine runs with only the rule under test selected (opt-in rules
included), so other rules cannot mask or add findings.
"""

from __future__ import annotations

import inspect
import re
from collections import Counter
from pathlib import Path

import pytest

from torchdoctor.agent.checks.base import EngineConfig, RawFinding
from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.checks.manifests import find_manifests
from torchdoctor.agent.checks.registry import rules_by_id
from torchdoctor.agent.models import Severity

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rules"
OWNED = (
    # point 1
    "loss-graph-accumulation", "retain-graph-in-loop", "outputs-stored-with-grad",
    "removed-torch-api", "deprecated-torch-api", "amp-gradscaler-legacy", "requires-grad-typo",
    "checkpoint-use-reentrant", "module-list-not-registered", "missing-super-init",
    "autograd-variable-legacy", "legacy-tensor-ctor", "device-mismatch-factory-in-forward",
    # point 2
    "amp-clip-without-unscale", "oom-handling", "anomaly-mode-left-on", "divide-by-std-no-eps",
    "log-unmasked", "nonfinite-loss-unchecked", "bn-batch-of-one", "terminal-size-from-stty",
    # point 3
    "double-softmax", "bce-on-sigmoid", "eval-without-eval-mode", "train-mode-not-restored",
    "leak-preprocessing", "leak-overlap", "leak-multi-test", "random-aug-on-eval",
    "metric-batch-mean-bias", "threshold-dependent-metric-only",
    # point 11
    "torch-load-unsafe", "pickle-model-artifacts", "hub-remote-code", "unverified-download",
    "hardcoded-secrets",
    # point 12
    "no-model-card", "no-group-metrics", "no-explainability-hook",
)  # fmt: skip
_EXPECT = re.compile(r"#\s*expect:\s*([\w-]+(?:\s*,\s*[\w-]+)*)")
_DOC_PARTS = ("Detects", "Why it matters:", "Example:", "Fix:")


def _fixture_files() -> list[Path]:
    return sorted(path for rule_id in OWNED for path in (FIXTURES / rule_id).glob("*.py"))


def _expected(path: Path, rule_id: str) -> list[int]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [
        number
        for number, text in enumerate(lines, start=1)
        if (m := _EXPECT.search(text)) and rule_id in [r.strip() for r in m.group(1).split(",")]
    ]


def _run(
    files: list[tuple[str, str]], rule_id: str, target: tuple[int, int] | None = None
) -> list[RawFinding]:
    config = EngineConfig(select=frozenset({rule_id}), target_torch=target)
    result = analyse_files(files, config, workers=1)
    return [f for f in result.all_findings() if f.rule == rule_id]


def _found(path: Path, rule_id: str) -> list[int]:
    findings = _run([(path.name, path.read_text(encoding="utf-8"))], rule_id)
    return sorted(f.line for f in findings)


def _applicable(files: list[tuple[str, str]], rule_ids: tuple[str, ...]) -> set[str]:
    config = EngineConfig(select=frozenset(rule_ids))
    return analyse_files(files, config, workers=1).applicable_rules() & set(rule_ids)


@pytest.mark.parametrize("path", _fixture_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_rule_reports_exactly_the_marked_lines(path: Path) -> None:
    rule_id = path.parent.name
    expected = _expected(path, rule_id)
    if path.name.startswith("positive_"):
        assert expected, f"{path} has no '# expect: {rule_id}' marker"
        files = [(path.name, path.read_text(encoding="utf-8"))]
        assert _applicable(files, (rule_id,)) == {rule_id}, "a positive must count as applicable"
    else:
        assert path.name.startswith("negative_"), f"unexpected fixture name {path.name}"
        assert not expected
    assert _found(path, rule_id) == expected


@pytest.mark.parametrize("rule_id", OWNED)
def test_rule_is_documented_and_has_both_kinds_of_fixture(rule_id: str) -> None:
    assert rule_id in rules_by_id(), f"{rule_id} is not registered"
    rule = rules_by_id()[rule_id]
    doc = inspect.cleandoc(rule.__doc__ or "")
    for part in _DOC_PARTS:
        assert part in doc, f"{rule_id}: docstring lacks {part!r}"
    names = [p.name for p in (FIXTURES / rule_id).glob("*.py")]
    assert any(n.startswith("positive_") for n in names), f"{rule_id}: no positive fixture"
    assert any(n.startswith("negative_") for n in names), f"{rule_id}: no negative fixture"
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", rule_id)
    assert rule.items and all(item.split(".")[0] == str(rule.point) for item in rule.items)


def test_points_have_the_planned_number_of_rules() -> None:
    by_point = Counter(rules_by_id()[rule_id].point for rule_id in OWNED)
    assert by_point[1] >= 8 and by_point[3] >= 8
    assert all(by_point[p] >= 3 for p in (2, 11, 12))


def test_high_false_positive_rules_are_opt_in() -> None:
    opt_in = {r for r in OWNED if rules_by_id()[r].tier == "opt-in"}
    assert opt_in == {
        "log-unmasked",
        "nonfinite-loss-unchecked",
        "threshold-dependent-metric-only",
        "no-group-metrics",
        "no-explainability-hook",
    }
    defaults = analyse_files([("m.py", "import torch\n")], EngineConfig(), workers=1).rules_run
    assert not opt_in & set(defaults)


def _fixture(rule_id: str, name: str) -> list[tuple[str, str]]:
    path = FIXTURES / rule_id / name
    return [(name, path.read_text(encoding="utf-8"))]


def test_torch_load_advice_follows_what_was_saved() -> None:
    findings = _run(_fixture("torch-load-unsafe", "positive_provenance.py"), "torch-load-unsafe")
    by_line = {f.line: f for f in findings}
    assert by_line[16].data["provenance"] == "weights" and by_line[16].data["fix_safe"] is True
    assert by_line[17].data["provenance"] == "weights" and by_line[17].data["fix_safe"] is True
    assert by_line[22].data["provenance"] == "module" and by_line[22].data["fix_safe"] is False
    assert "state_dict" in by_line[22].message
    assert by_line[26].data["provenance"] == "unknown" and by_line[26].data["fix_safe"] is False
    assert by_line[30].data["fix_safe"] is False


def test_torch_load_severity_depends_on_the_targeted_release() -> None:
    files = _fixture("torch-load-unsafe", "positive_provenance.py")
    old = {f.line: f.severity for f in _run(files, "torch-load-unsafe", target=(2, 4))}
    new = {f.line: f.severity for f in _run(files, "torch-load-unsafe", target=(2, 8))}
    assert old[16] == Severity.HIGH and new[16] == Severity.LOW
    assert old[22] == new[22] == Severity.HIGH  # a pickled module fails or is unsafe either way


def test_torch_load_is_quiet_where_the_project_allows_no_torch_without_the_safe_default() -> None:
    folder = FIXTURES / "torch-load-unsafe" / "floor_project"
    path = folder / "merge_adapter.py"
    files = [(path.name, path.read_text(encoding="utf-8"))]
    config = EngineConfig(select=frozenset({"torch-load-unsafe"}))

    def lines(manifests: dict[str, str]) -> list[int]:
        result = analyse_files(files, config, workers=1, manifests=manifests)
        return sorted(f.line for f in result.all_findings() if f.rule == "torch-load-unsafe")

    assert lines(find_manifests(folder)) == _expected(path, "torch-load-unsafe")  # torch>=2.7
    assert lines({"requirements.txt": "torch>=2.4\n"}) == [10, 11, 17]
    assert lines({"requirements.txt": "torch\n"}) == [10, 11, 17]


def test_the_pre_0_4_names_of_in_place_functions_are_deprecated() -> None:
    """Held-out pytorch-REINFORCE: `utils.clip_grad_norm(...)` (torch.nn.utils imported as
    `utils`) and `nn.init.xavier_uniform(...)`, which torch still warns about, were not
    reported."""
    source = (
        "import torch\n"
        "import torch.nn.utils as utils\n"
        "from torch import nn\n"
        "def update(model, layer):\n"
        "    utils.clip_grad_norm(model.parameters(), 40)\n"
        "    nn.init.xavier_uniform(layer.weight)\n"
        "    nn.init.constant(layer.bias, 0.0)\n"
        "    torch.nn.utils.clip_grad_norm_(model.parameters(), 40)\n"
        "    nn.init.xavier_uniform_(layer.weight)\n"
    )
    found = _run([("m.py", source)], "deprecated-torch-api")
    assert sorted(f.line for f in found) == [5, 6, 7]
    assert "clip_grad_norm_" in next(f.message for f in found if f.line == 5)


def test_deprecations_respect_the_targeted_release() -> None:
    source = (
        "import torch\nwith torch.cuda.amp.autocast():\n    pass\ns = torch.cuda.amp.GradScaler()\n"
    )
    files = [("m.py", source)]
    assert _run(files, "deprecated-torch-api", target=(2, 3)) == []
    assert [f.line for f in _run(files, "deprecated-torch-api", target=(2, 4))] == [2]
    assert _run(files, "amp-gradscaler-legacy", target=(2, 3)) == []
    assert [f.line for f in _run(files, "amp-gradscaler-legacy", target=(2, 8))] == [4]
    removed = [("m.py", "import torch\nx = torch.solve(b, A)\n")]
    assert [f.severity for f in _run(removed, "removed-torch-api", target=(1, 12))] == [
        Severity.MEDIUM
    ]
    assert [f.severity for f in _run(removed, "removed-torch-api", target=(2, 0))] == [
        Severity.HIGH
    ]


def test_hardcoded_secret_is_masked_in_the_report() -> None:
    findings = _run(_fixture("hardcoded-secrets", "positive_tokens.py"), "hardcoded-secrets")
    assert findings
    for finding in findings:
        for secret in ("AbCdEfGhIjKlMnOp", "3f9a8c7d6e5b4a3f2e1d", "IOSFODNN7EXAMPL3"):
            assert secret not in finding.code and secret not in finding.excerpt


def test_model_card_anywhere_in_the_project_satisfies_no_model_card() -> None:
    saving = _fixture("no-model-card", "positive_saved_undocumented.py")
    card = [
        (
            "docs/card.py",
            'from huggingface_hub import ModelCard\nModelCard("x").save("README.md")\n',
        )
    ]
    assert [f.file for f in _run(saving, "no-model-card")] == ["positive_saved_undocumented.py"]
    assert _run(saving + card, "no-model-card") == []


def test_evaluation_names_in_pytest_modules_are_not_evaluation_paths() -> None:
    source = (
        "import torch.nn as nn\n"
        "def test_forward():\n"
        "    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1))\n"
        "    assert model(x).argmax(1).tolist() == [1]\n"  # values: the mode matters
    )
    assert _run([("tests/test_model.py", source)], "eval-without-eval-mode") == []
    assert [f.line for f in _run([("evaluation.py", source)], "eval-without-eval-mode")] == [4]


def test_stand_in_models_of_pytest_modules_may_return_fixed_cpu_tensors() -> None:
    source = (
        "import torch\n"
        "from torch import nn\n"
        "class DraftModel(nn.Module):\n"
        "    def forward(self, idx):\n"
        "        return torch.tensor([0.0, 3.0, 10.0])[None, None, ...]\n"
        "def test_decode(decode):\n"
        "    device = 'cuda' if torch.cuda.is_available() else 'cpu'\n"
        "    assert decode(DraftModel(), torch.ones(1, 1, device=device)).tolist() == [[2]]\n"
    )
    rule = "device-mismatch-factory-in-forward"
    assert _run([("tests/test_speculative.py", source)], rule) == []
    assert [f.line for f in _run([("draft.py", source)], rule)] == [5]


def test_outputs_a_pytest_module_collects_to_compare_decodings_are_not_reported() -> None:
    source = (
        "import torch\n"
        "def test_cached_decoding_matches_parallel(model):\n"
        "    tokens = torch.randint(0, 10, (1, 6))\n"
        "    steps, cache = [], None\n"
        "    for i in range(tokens.shape[1]):\n"
        "        logits, cache = model(tokens[:, i : i + 1], cache=cache)\n"
        "        steps.append(logits)\n"
        "    assert torch.allclose(torch.cat(steps, dim=1), model(tokens)[0], atol=1e-5)\n"
    )
    rule = "outputs-stored-with-grad"
    assert _run([("tests/test_decoding.py", source)], rule) == []
    assert [f.line for f in _run([("decoding.py", source)], rule)] == [7]


def test_a_channel_count_handed_to_a_helper_of_another_file_follows_that_helper() -> None:
    """A coupling layer passes a one-element `IntTensor` of its channel count to a scripted
    gate in another file: reported only when that file's helper uses more than its element
    (or is not part of the audit)."""
    layer = (
        "import torch\n"
        "from torch import nn\n"
        "import gates\n"
        "class Coupling(nn.Module):\n"
        "    def __init__(self, channels):\n"
        "        super().__init__()\n"
        "        self.channels = channels\n"
        "        self.conv = nn.Conv1d(channels, 2 * channels, 3, padding=1)\n"
        "    def forward(self, x, cond):\n"
        "        count = torch.IntTensor([self.channels])\n"
        "        return gates.gated(self.conv(x), cond, count)\n"
    )
    reads_element = (
        "import torch\n"
        "@torch.jit.script\n"
        "def gated(a, b, n_channels):\n"
        "    n = n_channels[0]\n"
        "    z = a + b\n"
        "    return torch.tanh(z[:, :n]) * torch.sigmoid(z[:, n:])\n"
    )
    uses_whole = "import torch\ndef gated(a, b, scale):\n    return torch.tanh(a + b) * scale\n"
    rule = "device-mismatch-factory-in-forward"
    assert _run([("coupling.py", layer), ("gates.py", reads_element)], rule) == []
    found = _run([("coupling.py", layer), ("gates.py", uses_whole)], rule)
    assert [(f.file, f.line) for f in found] == [("coupling.py", 10)]
    assert [f.line for f in _run([("coupling.py", layer)], rule)] == [10]


def test_a_clean_training_script_raises_none_of_these_rules() -> None:
    script = FIXTURES.parent / "scripts" / "clean_training.py"
    config = EngineConfig(select=frozenset(OWNED))
    result = analyse_files([(script.name, script.read_text(encoding="utf-8"))], config, workers=1)
    assert [(f.rule, f.line) for f in result.all_findings() if f.rule in OWNED] == []


def test_a_module_without_ml_code_is_not_applicable_to_these_rules() -> None:
    files = [("util.py", "def add(a, b):\n    return a + b\n")]
    assert _applicable(files, OWNED) <= {"hardcoded-secrets"}


def test_saves_in_pytest_modules_release_no_model() -> None:
    round_trip = (
        "import tempfile\n"
        "from transformers import AutoTokenizer\n"
        "def test_special_tokens_survive_a_save():\n"
        "    tok = AutoTokenizer.from_pretrained('gpt2')\n"
        "    with tempfile.TemporaryDirectory() as d:\n"
        "        tok.save_pretrained(d)\n"
        "        assert AutoTokenizer.from_pretrained(d).vocab_size == tok.vocab_size\n"
    )
    training = "import torch\ndef finish(model):\n    torch.save(model.state_dict(), 'm.pt')\n"
    assert _run([("test_special_tokens.py", round_trip)], "no-model-card") == []
    both = [("test_special_tokens.py", round_trip), ("train.py", training)]
    assert [(f.file, f.line) for f in _run(both, "no-model-card")] == [("train.py", 3)]


def test_legacy_constructor_given_a_device_is_high_and_kept_for_the_file() -> None:
    """`torch.BoolTensor(mask, device=dev)` raises on a GPU: the file's one legacy-ctor finding
    is that call, high; `device="cpu"` is the idiom, low."""
    source = (
        "import torch\n"
        "ids = torch.LongTensor([1, 2])\n"
        "mask = torch.BoolTensor([1, 0], device=dev)\n"
        "cpu = torch.LongTensor([1], device='cpu')\n"
    )
    (finding,) = _run([("m.py", source)], "legacy-tensor-ctor")
    assert (finding.line, finding.severity) == (3, Severity.HIGH)
    (low,) = _run([("m.py", source.replace("device=dev", "device='cpu'"))], "legacy-tensor-ctor")
    assert low.severity is Severity.LOW
