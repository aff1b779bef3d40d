"""A codemod that recognises its finding but finds no safe edit says why (shown with the
finding as "no automatic fix"), on shapes seen in public training code (the code is written
here): a GAN discriminator ending in nn.Sigmoid fed to BCELoss (pytorch/examples dcgan),
checkpoints of unknown content loaded for resuming (imagenet, DDP tutorials), probabilities
returned by a model's forward into cross-entropy, an evaluation run through a helper."""

from __future__ import annotations

import pytest

from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.models import FixTarget

DISCRIMINATOR_WITH_SIGMOID = """
import torch
import torch.nn as nn


class Discriminator(nn.Module):
    def __init__(self):
        super().__init__()
        self.main = nn.Sequential(nn.Linear(64, 1), nn.Sigmoid())

    def forward(self, x):
        return self.main(x).view(-1)


netD = Discriminator()
criterion = nn.BCELoss()
optimizerD = torch.optim.Adam(netD.parameters())
for real, label in loader:
    netD.zero_grad()
    output = netD(real)
    errD_real = criterion(output, label)
    errD_real.backward()
    optimizerD.step()
"""

RESUME_UNKNOWN_CHECKPOINT = """
import torch


def resume(model, optimizer, path):
    checkpoint = torch.load(path)
    model.load_state_dict(checkpoint["state_dict"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    return checkpoint["epoch"]
"""

WHOLE_MODULE_CHECKPOINT = """
import torch


def save(model):
    torch.save(model, "model.pt")


def load():
    return torch.load("model.pt")
"""

FORWARD_RETURNS_PROBABILITIES = """
import torch
import torch.nn as nn
import torch.nn.functional as F


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(10, 3)

    def forward(self, x):
        return F.softmax(self.fc(x), dim=1)


model = Classifier()
criterion = nn.CrossEntropyLoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
for x, y in loader:
    optimizer.zero_grad()
    loss = criterion(model(x), y)
    loss.backward()
    optimizer.step()
"""

CASES = {
    "bce-on-sigmoid": (DISCRIMINATOR_WITH_SIGMOID, "return logits"),
    "torch-load-unsafe": (RESUME_UNKNOWN_CHECKPOINT, "load only files you trust"),
    "double-softmax": (FORWARD_RETURNS_PROBABILITIES, "return logits"),
}


def _target(source: str, rule: str) -> FixTarget:
    """The rule's first finding on `source`, as its codemod reads it."""
    found = analyse_files([("m.py", source)], workers=1).all_findings()
    first = next((f for f in found if f.rule == rule), None)
    assert first is not None, f"{rule} does not fire on its shape"
    return FixTarget(
        rule=rule, file="m.py", line=first.line, end_line=first.end_line, data=first.data
    )


@pytest.mark.parametrize("rule", sorted(CASES))
def test_a_refused_fix_says_why(rule: str) -> None:
    source, reason = CASES[rule]
    codemod = codemod_for(rule)
    assert codemod is not None
    target = _target(source, rule)
    assert codemod.transform(source, target) is None
    explained = codemod.explain(source, target)
    assert explained is not None and reason in explained


def test_a_pickled_module_is_named_as_the_reason() -> None:
    codemod = codemod_for("torch-load-unsafe")
    assert codemod is not None
    target = _target(WHOLE_MODULE_CHECKPOINT, "torch-load-unsafe")
    explained = codemod.explain(WHOLE_MODULE_CHECKPOINT, target)
    assert explained is not None and "state_dict()" in explained


INLINE_SIGMOID = """
import torch
import torch.nn.functional as F

loss = F.binary_cross_entropy(torch.sigmoid(z), y)
"""


def test_an_applied_fix_has_no_refusal() -> None:
    codemod = codemod_for("bce-on-sigmoid")
    assert codemod is not None
    target = FixTarget(rule="bce-on-sigmoid", file="m.py", line=5, end_line=5)
    assert codemod.transform(INLINE_SIGMOID, target) is not None
    assert codemod.explain(INLINE_SIGMOID, target) is None
