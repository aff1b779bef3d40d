"""The items no rule decides alone get a verdict with a reason that names what is missing
(presence of annotations, input checks, drift monitoring, an inference compiler, group
metrics, attributions), and `no-model-card` recognises a card kept in the repository."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES
from torchdoctor.agent.artifacts.architecture import architecture_evidence
from torchdoctor.agent.artifacts.card import card_artifact
from torchdoctor.agent.artifacts.presence import presence_evidence
from torchdoctor.agent.artifacts.sandboxed import SandboxedRun
from torchdoctor.agent.artifacts.target import NoTarget
from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.checks.rules.no_model_card import is_model_card
from torchdoctor.agent.localise import phrase
from torchdoctor.agent.reasoning.offline import _not_checked_reason
from torchdoctor.agent.workspace import load_workspace
from torchdoctor.sandbox.config import get_sandbox

SAVES = (
    "import torch\nfrom torch import nn\n\n\ndef main():\n    model = nn.Linear(2, 2)\n"
    "    torch.save(model.state_dict(), 'model.pt')\n"
)


@pytest.mark.parametrize(
    ("path", "text", "card"),
    [
        ("MODEL_CARD.md", "# Risk model\nIntended use: triage.\n", True),
        ("README.md", "---\nlicense: mit\npipeline_tag: text-classification\n---\n# M\n", True),
        ("README.md", "# Net\n## Model card\nSee below.\n", True),
        ("README.md", "# Net\n## Intended use\n...\n## Limitations\n...\n", True),
        ("README.md", "---\ntitle: my blog\nlayout: post\n---\n# Net\n", False),
        ("README.md", "# Net\n## Installation\n## Usage\n## Limitations\n", False),
        ("MODEL_CARD.md", "  \n", False),
    ],
)
def test_what_counts_as_a_model_card(path: str, text: str, card: bool) -> None:
    assert is_model_card(path, text) is card


def test_a_card_in_the_repository_silences_no_model_card(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(SAVES)
    (tmp_path / "data.py").write_text("import torch\n")
    bare = load_workspace(tmp_path, [], 2_000_000)
    found = analyse_files(bare.pairs(), documents=bare.documents).all_findings()
    assert [f.rule for f in found if f.rule == "no-model-card"] == ["no-model-card"]
    (tmp_path / "MODEL_CARD.md").write_text("# Model card\nIntended use: demos.\n")
    carded = load_workspace(tmp_path, [], 2_000_000)
    assert set(carded.documents) == {"MODEL_CARD.md"}
    again = analyse_files(carded.pairs(), documents=carded.documents).all_findings()
    assert not [f for f in again if f.rule == "no-model-card"]


def test_a_card_beside_a_single_audited_file_counts(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(SAVES)
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\nlibrary_name: torch\n---\n")
    workspace = load_workspace(tmp_path / "train.py", [], 2_000_000)
    assert "README.md" in workspace.documents


def _verdicts(path: Path) -> dict[str, tuple[str, str]]:
    workspace = load_workspace(path, [], 2_000_000)
    return {
        ev.data["items"][0]: (ev.data["verdict"], ev.message)
        for _point, ev in presence_evidence(workspace, [])
    }


def test_the_bundled_example_says_what_each_item_is_missing() -> None:
    verdicts = _verdicts(EXAMPLES / "train_buggy.py")
    assert verdicts["1.2"][0] == "not-checked" and "jaxtyping" in verdicts["1.2"][1]
    assert verdicts["2.1"][0] == "not-checked" and "no input validation" in verdicts["2.1"][1]
    assert verdicts["5.4"][0] == "not-checked" and "--artifacts drift" in verdicts["5.4"][1]
    assert verdicts["7.3"][0] == "not-checked" and "TensorRT" in verdicts["7.3"][1]
    assert verdicts["12.1"][0] == "not-applicable"
    assert verdicts["12.2"][0] == "not-checked" and "no-explainability-hook" in verdicts["12.2"][1]
    assert verdicts["3.2"][0] == "not-checked" and "no paper is cited" in verdicts["3.2"][1]


def test_the_papers_a_project_cites_are_named_for_its_reviewer(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text(
        "Implements [Attention Is All You Need](https://arxiv.org/abs/1706.03762v7).\n"
    )
    (tmp_path / "model.py").write_text(
        '"""Label smoothing as in arXiv:1512.00567; init from doi:10.1109/ICCV.2015.123."""\n'
        "# the same paper again: https://arxiv.org/pdf/1706.03762\n"
    )
    verdict, message = _verdicts(tmp_path)["3.2"]
    assert verdict == "not-checked"
    assert message.startswith(
        "cites arXiv:1512.00567 (model.py), arXiv:1706.03762 (README.md), "
        "doi:10.1109/ICCV.2015.123 (model.py): whether the code follows it needs a reviewer's"
    )
    french = phrase(message, "fr")
    assert french.startswith("cite arXiv:1512.00567 (model.py)") and "relecteur" in french


def test_what_the_code_has_passes_saying_where(tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "train_buggy.py", tmp_path / "train.py")
    (tmp_path / "serve.py").write_text(
        "import torch\nimport onnxruntime\nfrom captum.attr import IntegratedGradients\n"
        "from jaxtyping import Float\n\n\ndef check(x: torch.Tensor) -> None:\n"
        "    if x.ndim != 2:\n        raise ValueError('expected (batch, features)')\n\n\n"
        "def report(df):\n    return df.groupby('sex').accuracy.mean()\n"
    )
    verdicts = _verdicts(tmp_path)
    for item in ("1.2", "2.1", "7.3", "12.1", "12.2"):
        assert verdicts[item][0] == "pass" and "serve.py" in verdicts[item][1], item
    assert verdicts["5.4"][0] == "not-checked"


def test_a_sensitive_column_without_group_metrics_names_it(tmp_path: Path) -> None:
    (tmp_path / "evaluate.py").write_text(
        "import torch\nfrom sklearn.metrics import accuracy_score\n\n\n"
        "def score(df, preds):\n    groups = df['sex']\n"
        "    return accuracy_score(df['label'], preds), groups\n"
    )
    verdict, message = _verdicts(tmp_path)["12.1"]
    assert verdict == "not-checked" and "the data has sex" in message


def test_an_optional_probe_names_its_option() -> None:
    assert _not_checked_reason("6.3") == (
        "needs an instrumented run with --probe compile (pass --run and --probe compile)"
    )


def test_every_presence_reason_is_phrased_in_french(tmp_path: Path) -> None:
    (tmp_path / "evaluate.py").write_text("import torch\n\n\ndef f(df):\n    return df['sex']\n")
    messages = [m for _v, m in _verdicts(EXAMPLES / "train_buggy.py").values()]
    messages += [m for _v, m in _verdicts(tmp_path).values()]
    messages += ["tensor shapes annotated (jaxtyping or torchtyping) in a.py"]
    for message in messages:
        french = phrase(message, "fr")
        assert french != message and "no " not in french and " the " not in french, french


MIXED = """import json

import matplotlib.pyplot as plt
import torch


def run(model, loader, optimizer):
    for x, y in loader:
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        score = sum(float(model(x).mean()) for x, _ in loader)
    plt.plot([score])
    with open("score.json", "w") as handle:
        json.dump(score, handle)


def build(name):
    if name == "resnet":
        model = torch.nn.Linear(2, 2)
    elif name == "mlp":
        model = torch.nn.Linear(2, 3)
    elif name == "wide":
        model = torch.nn.Linear(2, 4)
    return model


def pick(mode):
    if mode == "a":
        return 1
    elif mode == "b":
        return 2
"""


def test_mixed_responsibilities_and_a_string_dispatch_are_low_advice(tmp_path: Path) -> None:
    (tmp_path / "pipeline.py").write_text(MIXED)
    found = architecture_evidence(load_workspace(tmp_path, [], 2_000_000))
    specs = {ev.data["finding"]["rule"]: (point, ev) for point, ev in found}
    point, mixed = specs["mixed-responsibilities"]
    assert point == 10 and mixed.line == 7 and mixed.data["finding"]["severity"] == "low"
    assert "training, evaluation, I/O, plotting" in mixed.message
    point, chain = specs["string-dispatch-chain"]
    assert point == 9 and chain.line == 21 and "3 branches" in chain.message
    assert len(found) == 2, "a two-branch chain that builds nothing is not advice"


def test_the_bundled_example_mixes_no_responsibilities() -> None:
    found = architecture_evidence(load_workspace(EXAMPLES / "train_buggy.py", [], 2_000_000))
    assert [(ev.data["items"], ev.data["verdict"]) for _p, ev in found] == [
        (["10.2"], "pass"),
        (["9.5"], "not-checked"),
    ]
    no_chain = found[1][1].message
    assert no_chain.startswith("no if/elif chain in the 1 Python file(s) picks an implementation")
    assert "needs a reviewer's judgement" in no_chain
    for _point, ev in found:
        french = phrase(ev.message, "fr")
        assert french != ev.message and "no " not in french and " the " not in french, french


def test_a_card_draft_without_a_model_says_what_a_person_must_fill(tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "leaky_tabular.py", tmp_path / "leaky_tabular.py")
    workspace = load_workspace(tmp_path, [], 2_000_000)
    findings = analyse_files(workspace.pairs()).all_findings()
    card = card_artifact(
        NoTarget(reason="needs an instrumented run"),
        workspace,
        SandboxedRun(get_sandbox("local"), workspace),
        findings,
        [ev for _p, ev in presence_evidence(workspace, [])],
    )
    assert card.state == "offered" and card.path == "MODEL_CARD.md" and not card.checks
    assert "- Architecture: TODO (needs an instrumented run)" in card.content
    assert "## Known issues" in card.content and "`leak-preprocessing`" in card.content
    (tmp_path / "MODEL_CARD.md").write_text(card.content)
    again = card_artifact(
        NoTarget(reason="-"),
        load_workspace(tmp_path, [], 2_000_000),
        SandboxedRun(get_sandbox("local"), workspace),
        [],
        [],
    )
    assert again.state == "not-applicable" and "MODEL_CARD.md" in again.reason


def test_rules_that_are_off_are_named_with_the_option_that_turns_them_on() -> None:
    off = _not_checked_reason("12.2", rules_run=[])
    assert off == "opt-in rule(s) not selected: no-explainability-hook (--select)"
    assert phrase(off, "fr").startswith("règle(s) optionnelle(s) non sélectionnée(s)")
    ignored = _not_checked_reason("6.5", rules_run=[])
    assert ignored.startswith("rule(s) turned off: ") and "unfused-optimizer" in ignored
