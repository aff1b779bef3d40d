"""Project-wide advice (no AMP, unfused optimizer, unpinned loaders...) is said once per
project, at the most entry-like file, with the other places as related locations; bug rules
keep one finding per place."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from tests.rule_fixtures import load_case
from torchdoctor.agent.checks.advice_scope import ONCE_PER_PROJECT
from torchdoctor.agent.checks.engine import analyse_files

PROJECT = Path(__file__).resolve().parents[1] / "fixtures" / "advice_scope" / "project"


def test_advice_is_reported_once_with_the_other_places_related() -> None:
    findings = analyse_files(load_case(PROJECT), workers=1).all_findings()
    advice = [f for f in findings if f.rule in ONCE_PER_PROJECT]
    counts = Counter(f.rule for f in advice)
    assert set(counts) >= {"no-amp", "unfused-optimizer", "pin-memory-off", "no-torch-compile"}
    assert all(n == 1 for n in counts.values()), counts
    for finding in advice:
        assert finding.file == "train.py", finding  # the top-level script, not the example
        related = finding.data["related"]
        assert [place["file"] for place in related] == ["examples/mnist/main.py"]
        assert "examples/mnist/main.py:" in finding.message
    seeds = [f.file for f in findings if f.rule == "no-torch-seed"]
    assert sorted(seeds) == ["examples/mnist/main.py", "train.py"]  # a bug rule: every place


def test_a_single_place_is_left_as_it_is() -> None:
    files = [(p, t) for p, t in load_case(PROJECT) if p != "examples/mnist/main.py"]
    findings = analyse_files(files, workers=1).all_findings()
    advice = [f for f in findings if f.rule in ONCE_PER_PROJECT]
    assert advice
    assert all("related" not in f.data and "-wide, also" not in f.message for f in advice)


def test_a_legacy_idiom_is_said_once_per_file() -> None:
    old = (
        "import torch\nfrom torch.autograd import Variable\n\n\n"
        "def step(x, y):\n    a = Variable(x)\n    b = Variable(y)\n    return a + b\n"
    )
    files = [("gan.py", old), ("other.py", old)]
    findings = analyse_files(files, workers=1).all_findings()
    legacy = [f for f in findings if f.rule == "autograd-variable-legacy"]
    assert sorted((f.file, f.line) for f in legacy) == [("gan.py", 6), ("other.py", 6)]
    assert all([p["line"] for p in f.data["related"]] == [7] for f in legacy)


def test_a_legacy_idiom_said_once_speaks_for_its_gravest_place() -> None:
    # the shape of a public YOLOv3 detect script: a plain `Variable` while loading, then the
    # prediction under `volatile=True` (ignored since 0.4, so autograd stays on)
    script = (
        "import torch\nfrom torch.autograd import Variable\n\n\n"
        "def detect(model, batch):\n    dummy = Variable(batch[:1])\n"
        "    return model(Variable(batch, volatile=True)), dummy\n"
    )
    plain = script.replace(", volatile=True", "")
    findings = analyse_files([("detect.py", script), ("plain.py", plain)], workers=1)
    legacy = {f.file: f for f in findings.all_findings() if f.rule == "autograd-variable-legacy"}
    assert (legacy["detect.py"].line, legacy["detect.py"].severity) == (7, "medium")
    assert "volatile=True` is ignored" in legacy["detect.py"].message
    assert [p["line"] for p in legacy["detect.py"].data["related"]] == [6]
    assert legacy["plain.py"].line == 6  # the same rank everywhere: the first place speaks


def test_the_advice_is_kept_outside_the_tests_even_when_they_are_shallower() -> None:
    script = (PROJECT / "train.py").read_text(encoding="utf-8")
    files = [("pkg/finetune/train.py", script), ("tests/test_train.py", script)]
    advice = [
        f for f in analyse_files(files, workers=1).all_findings() if f.rule in ONCE_PER_PROJECT
    ]
    assert advice
    assert all(f.file == "pkg/finetune/train.py" for f in advice), advice


def test_an_idiom_twice_on_one_line_is_one_place_with_no_also_list() -> None:
    """`Variable(x), Variable(y)` on the only line that has them: one finding, said as is."""
    source = "import torch\nfrom torch.autograd import Variable\na, b = Variable(x), Variable(y)\n"
    (finding,) = [
        f
        for f in analyse_files([("show.py", source)], workers=1).all_findings()
        if f.rule == "autograd-variable-legacy"
    ]
    assert "also" not in finding.message and "related" not in finding.data


GAN = """import torch
from torch import nn


class D(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 1), nn.Sigmoid())

    def forward(self, x):
        return self.net(x)


net_d, net_g = D(), nn.Linear(2, 4)
bce = nn.BCELoss()
for x, z, ones, zeros in batches:
    loss_d = bce(net_d(x), ones) + bce(net_d(net_g(z).detach()), zeros)
    loss_d.backward()
    loss_g = bce(net_d(net_g(z)), ones)
    loss_g.backward()
    inline = bce(torch.sigmoid(x), ones) + bce(torch.sigmoid(z), zeros)
"""


def test_losses_fed_by_one_sigmoid_elsewhere_are_one_finding() -> None:
    """Held-out mnist-gans' gan/main.py: the discriminator's final Sigmoid (line 78) feeds
    three BCELoss calls: three high findings with one cause and no automatic fix. A sigmoid
    inside a loss call is its own place (each call is its own fix)."""
    findings = analyse_files([("gan.py", GAN)], workers=1).all_findings()
    bce = sorted((f.line, f.data["sigmoid_line"]) for f in findings if f.rule == "bce-on-sigmoid")
    assert bce == [(17, 8), (21, 21), (21, 21)], bce
    kept = next(f for f in findings if f.rule == "bce-on-sigmoid" and f.line == 17)
    assert [place["line"] for place in kept.data["related"]] == [19]
    assert "gan.py:19" in kept.message
