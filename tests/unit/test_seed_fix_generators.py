"""The seed fix seeds torch, and `random` / NumPy only where the program draws from them."""

from __future__ import annotations

from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.models import FixTarget

# pytorch/examples' MNIST shape: torch only, NumPy imported for a running mean of the losses
TRAIN = """\
import argparse

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from data import ImageFolderList


def main():
    parser = argparse.ArgumentParser()
    args = parser.parse_args()
    model = nn.Linear(784, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(ImageFolderList(args.root), batch_size=64, shuffle=True)
    losses = []
    for x, y in loader:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    print(np.mean(losses))


if __name__ == "__main__":
    main()
"""

# a dataset module that shuffles its file list with Python's generator
DATA_SHUFFLED = """\
import os
import random

import torch
from torch.utils.data import Dataset


class ImageFolderList(Dataset):
    def __init__(self, root):
        self.files = sorted(os.listdir(root))
        random.shuffle(self.files)

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        return torch.load(os.path.join(self.root, self.files[i]), weights_only=True)
"""

# near miss: its own seeded generator, which the global seed does not reach
DATA_OWN_GENERATOR = DATA_SHUFFLED.replace(
    "random.shuffle(self.files)", "random.Random(0).shuffle(self.files)"
)


def _fixed(files: list[tuple[str, str]]) -> str:
    config = EngineConfig(select=frozenset({"no-torch-seed"}))
    found = analyse_files(files, config, workers=1).all_findings()
    (finding,) = [f for f in found if f.rule == "no-torch-seed"]
    target = FixTarget(
        rule=finding.rule,
        file=finding.file,
        line=finding.line,
        end_line=finding.end_line,
        data=finding.data,
    )
    codemod = codemod_for("no-torch-seed")
    assert codemod is not None
    fixed = codemod.transform(dict(files)[finding.file], target)
    assert fixed is not None
    return fixed


def test_a_script_that_uses_numpy_for_arrays_gets_only_torch_seeded() -> None:
    fixed = _fixed([("train.py", TRAIN), ("data.py", DATA_OWN_GENERATOR)])
    assert "torch.manual_seed(0)" in fixed
    assert "random" not in fixed and "np.random.seed" not in fixed


def test_a_draw_in_an_imported_project_module_seeds_that_generator() -> None:
    fixed = _fixed([("train.py", TRAIN), ("data.py", DATA_SHUFFLED)])
    assert "import random\n" in fixed and "random.seed(0)" in fixed
    assert "torch.manual_seed(0)" in fixed and "np.random.seed" not in fixed


def test_a_numpy_draw_in_the_script_seeds_numpy_under_its_alias() -> None:
    script = TRAIN.replace("print(np.mean(losses))", "np.random.shuffle(losses)")
    fixed = _fixed([("train.py", script), ("data.py", DATA_OWN_GENERATOR)])
    assert "np.random.seed(0)" in fixed
    assert "import random" not in fixed and "\n    random.seed" not in fixed


# a split module that holds out part of the files with scikit-learn, which draws from NumPy's
# global generator when given no random_state
SPLIT = """\
import os

from sklearn.model_selection import train_test_split


def split(root):
    return train_test_split(sorted(os.listdir(root)), test_size=0.1)
"""


def test_a_library_split_without_random_state_seeds_numpy() -> None:
    script = TRAIN.replace(
        "from data import ImageFolderList",
        "from data import ImageFolderList\nfrom split import split",
    )
    fixed = _fixed([("train.py", script), ("data.py", DATA_OWN_GENERATOR), ("split.py", SPLIT)])
    assert "np.random.seed(0)" in fixed


def test_a_library_split_given_its_random_state_seeds_nothing_more() -> None:
    script = TRAIN.replace(
        "from data import ImageFolderList",
        "from data import ImageFolderList\nfrom split import split",
    )
    seeded = SPLIT.replace("test_size=0.1)", "test_size=0.1, random_state=0)")
    fixed = _fixed([("train.py", script), ("data.py", DATA_OWN_GENERATOR), ("split.py", seeded)])
    assert "np.random.seed" not in fixed
