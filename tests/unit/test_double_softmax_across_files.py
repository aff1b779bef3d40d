"""double-softmax across files: reported on the softmax another file's loss receives, where it
is fixed, with every loss that receives it as a related location."""

from __future__ import annotations

from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.checks.engine import analyse_files

MODELS = """import torch.nn as nn
import torch.nn.functional as F


class Classifier(nn.Module):
    def __init__(self, dim, classes):
        super().__init__()
        self.fc = nn.Linear(dim, classes)

    def forward(self, x):
        return F.softmax(self.fc(x), dim=1){suppression}
"""
TRAIN = """import torch
import torch.nn as nn

from models import Classifier


def train(loader):
    model = Classifier(784, 10)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters())
    for data, target in loader:
        optimizer.zero_grad()
        loss = criterion(model(data), target)
        loss.backward()
        optimizer.step()
"""
EVALUATE = """import torch
import torch.nn.functional as F

from models import Classifier


def evaluate(loader):
    model = Classifier(784, 10).eval()
    total = 0.0
    with torch.no_grad():
        for data, target in loader:
            total += F.cross_entropy(model(data), target).item()
    return total
"""
ONLY_THIS_RULE = EngineConfig(select=frozenset({"double-softmax"}))


def _findings(suppression: str = "") -> list:
    files = [
        ("models.py", MODELS.format(suppression=suppression)),
        ("train.py", TRAIN),
        ("evaluate.py", EVALUATE),
    ]
    result = analyse_files(files, ONLY_THIS_RULE, workers=1)
    return [f for f in result.all_findings() if f.rule == "double-softmax"]


def test_one_finding_on_the_softmax_names_each_loss_that_receives_it() -> None:
    (finding,) = _findings()
    assert (finding.file, finding.line) == ("models.py", 11)
    assert finding.code.strip() == "return F.softmax(self.fc(x), dim=1)"
    assert "`Classifier.forward` returns this softmax's output" in finding.message
    related = sorted((r["file"], r["line"]) for r in finding.data["related"])
    assert related == [("evaluate.py", 12), ("train.py", 13)]
    assert all("cross-entropy receives" in r["message"] for r in finding.data["related"])
    assert "evaluate.py:12" in finding.message and "train.py:13" in finding.message


def test_an_ignore_comment_on_the_softmax_silences_it_in_every_file() -> None:
    assert _findings("  # torchdoctor: ignore[double-softmax]") == []
