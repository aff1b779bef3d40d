"""no-torch-seed follows imports at any depth: a module that seeds torch when it is imported
seeds every script that imports it, directly or through another project module."""

from __future__ import annotations

from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.checks.engine import analyse_files

# The shape of an RNN encoder-decoder tutorial: the script star-imports its utilities, which
# star-import the hyperparameters module, which seeds torch at module level.
PARAMETERS = """\
import torch

HIDDEN_SIZE = 64
LEARNING_RATE = 2e-4
torch.manual_seed(0)
"""

UTILS = """\
from parameters import *

zeros = torch.zeros
"""

TRAIN = """\
import sys

from utils import *


def train():
    model = torch.nn.Linear(HIDDEN_SIZE, 2)
    optim = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    for x in [zeros(4, HIDDEN_SIZE)]:
        optim.zero_grad()
        model(x).sum().backward()
        optim.step()


if __name__ == "__main__":
    train()
"""


def _seed_findings(files: list[tuple[str, str]]) -> list[str]:
    config = EngineConfig(select=frozenset({"no-torch-seed"}))
    found = analyse_files(files, config, workers=1).all_findings()
    return [f.file for f in found if f.rule == "no-torch-seed"]


def test_a_seed_two_imports_away_seeds_the_script() -> None:
    files = [("parameters.py", PARAMETERS), ("utils.py", UTILS), ("train.py", TRAIN)]
    assert _seed_findings(files) == []


def test_the_chain_without_the_seed_is_still_reported() -> None:
    unseeded = PARAMETERS.replace("torch.manual_seed(0)\n", "")
    files = [("parameters.py", unseeded), ("utils.py", UTILS), ("train.py", TRAIN)]
    assert _seed_findings(files) == ["train.py"]
