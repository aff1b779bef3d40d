"""zero-grad-missing: a model whose forward clears its own gradients (`self.zero_grad()`)
clears them for the loop that calls it, in this file or another one."""

from __future__ import annotations

from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.checks.engine import analyse_files

# The shape of an RNN encoder-decoder tutorial: the model, star-imported under a lower-case
# class name, clears its gradients at the top of forward; the loop steps two optimizers.
MODEL = """\
import torch
import torch.nn as nn


class encoder_decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(4, 4)
        self.dec = nn.Linear(4, 1)

    def forward(self, x):
        self.zero_grad()
        return self.dec(self.enc(x)).pow(2).mean()
"""

TRAIN = """\
from model import *


def train(batches):
    model = encoder_decoder()
    enc_optim = torch.optim.Adam(model.enc.parameters(), lr=1e-3)
    dec_optim = torch.optim.Adam(model.dec.parameters(), lr=1e-3)
    for x in batches:
        loss = model(x)
        loss.backward()
        enc_optim.step()
        dec_optim.step()


if __name__ == "__main__":
    train([torch.randn(2, 4)])
"""


def _lines(files: list[tuple[str, str]]) -> list[tuple[str, int]]:
    found = analyse_files(files, EngineConfig(), workers=1).all_findings()
    return [(f.file, f.line) for f in found if f.rule == "zero-grad-missing"]


def test_a_star_imported_model_clearing_its_gradients_clears_the_loop() -> None:
    assert _lines([("model.py", MODEL), ("train.py", TRAIN)]) == []


def test_the_same_model_without_its_zero_grad_is_reported() -> None:
    plain = MODEL.replace("        self.zero_grad()\n", "")
    assert _lines([("model.py", plain), ("train.py", TRAIN)]) == [("train.py", 8)]


def test_a_model_of_the_same_file_clearing_its_gradients_clears_the_loop() -> None:
    one_file = MODEL + "\n\n" + TRAIN.replace("from model import *\n", "")
    assert _lines([("train.py", one_file)]) == []
    plain = one_file.replace("        self.zero_grad()\n", "")
    assert len(_lines([("train.py", plain)])) == 1
