"""Notebooks as Python: code cells concatenated, IPython syntax blanked, lines mapped back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.notebooks import NotebookError, cell_of, notebook_source
from torchdoctor.agent.workspace import load_paths, load_workspace


def _notebook(*cells: tuple[str, str]) -> str:
    return json.dumps(
        {
            "cells": [{"cell_type": kind, "metadata": {}, "source": src} for kind, src in cells],
            "nbformat": 4,
            "nbformat_minor": 5,
        }
    )


def test_code_cells_concatenate_with_a_map_back_to_cell_and_line() -> None:
    converted = notebook_source(
        _notebook(
            ("markdown", "# Title"),
            ("code", "import torch\n%time x = 1\n!nvidia-smi\ntorch?"),
            ("code", "%%bash\nls data\n"),
            ("code", ["y = torch.ones(2)\n", "print(y)\n"]),
        )
    )
    lines = converted.text.splitlines()
    assert lines[:4] == ["import torch", "#", "#", "#"]  # magics, shell escapes, help skipped
    assert lines[4:6] == ["#", "#"]  # a cell magic's whole cell
    assert lines[6:] == ["y = torch.ones(2)", "print(y)"]
    compile(converted.text, "nb", "exec")
    assert cell_of(converted.cells, 1) == (2, 1)
    assert cell_of(converted.cells, 8) == (4, 2)  # markdown cells count in the numbering


def test_a_branch_holding_only_magics_still_parses() -> None:
    cell = (
        "logger = 'tb'\n"
        "if logger == 'comet':\n"
        "  %pip install -q comet_ml\n"
        "elif logger == 'tb':\n"
        "  %load_ext tensorboard\n"
        "  !ls runs\n"
    )
    converted = notebook_source(_notebook(("code", cell)))
    assert converted.text.splitlines()[2:] == ["  pass", "elif logger == 'tb':", "  pass", "  pass"]
    compile(converted.text, "nb", "exec")


@pytest.mark.parametrize(
    "text",
    ['{"cells": [', "[1, 2]", '{"cells": {}}', '{"cells": [{"cell_type": "code"'],
)
def test_a_file_that_is_not_a_notebook_is_an_error_not_a_crash(text: str) -> None:
    with pytest.raises(NotebookError):
        notebook_source(text)


def test_a_cell_left_to_fill_in_stops_only_itself(tmp_path: Path) -> None:
    """Jupyter compiles each cell alone: an exercise's `____` cell is named and left out, and
    the cells after it are still audited, on their own lines."""
    notebook = _notebook(
        ("code", "import torch\nmodel = torch.nn.Linear(2, 2)"),
        ("markdown", "Fill in the optimizer:"),
        ("code", "optimizer = ____\ncriterion = "),
        ("code", "for x, y in loader:\n    loss = criterion(model(x), y)\n    loss.backward()"),
    )
    converted = notebook_source(notebook)
    assert [cell for cell, _ in converted.unparsed] == [3]
    assert converted.text.splitlines()[2:4] == ["#", "#"]
    compile(converted.text, "nb", "exec")
    assert cell_of(converted.cells, 5) == (4, 1)

    (tmp_path / "exercise.ipynb").write_text(notebook)
    workspace = load_workspace(tmp_path)
    assert [f.path for f in workspace.files] == ["exercise.ipynb"]
    (note,) = workspace.notes
    assert note.file == "exercise.ipynb"
    assert note.reason.startswith("cell 3 not audited (the rest is): SyntaxError")


def test_a_notebook_in_one_of_several_folders_keeps_its_cell_map(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "train.py").write_text("import torch\n")
    notebook = _notebook(("markdown", "# Notes"), ("code", "import torch\nx = torch.ones(1)"))
    (tmp_path / "b" / "explore.ipynb").write_text(notebook)
    workspace = load_paths([tmp_path / "a", tmp_path / "b"])
    (explored,) = [f for f in workspace.files if f.path == "b/explore.ipynb"]
    assert cell_of(explored.cells, 2) == (2, 2)


def test_a_notebooks_loader_workers_need_no_main_guard() -> None:
    """The same top-level cells are a script that spawn workers re-run, and a notebook that
    they do not (there is no guard to add to a notebook)."""
    cells = _notebook(
        ("code", "import torch\nfrom torch.utils.data import DataLoader"),
        ("code", "loader = DataLoader(dataset, batch_size=32, num_workers=4)"),
    )
    text = notebook_source(cells).text
    config = EngineConfig(select=frozenset({"no-main-guard-workers"}))

    def rules(path: str) -> set[str]:
        return {f.rule for f in analyse_files([(path, text)], config, workers=1).all_findings()}

    assert "no-main-guard-workers" in rules("explore.py")
    assert "no-main-guard-workers" not in rules("explore.ipynb")


def test_advice_said_once_names_its_other_places_by_cell(tmp_path: Path) -> None:
    """A legacy idiom said once per notebook lists its other places as `nb.ipynb:cell C:L`
    (the cell and the line there, in the message and the related locations), each line once
    however many times the idiom appears on it."""
    from torchdoctor.agent.config import AuditConfig
    from torchdoctor.agent.gather import run_static

    notebook = _notebook(
        ("code", "import torch\nx = torch.FloatTensor([1.0])"),
        ("markdown", "## Decoder"),
        ("code", "h = 1\ny = torch.FloatTensor([2.0]) + torch.FloatTensor([3.0])"),
    )
    (tmp_path / "seq2seq.ipynb").write_text(notebook)
    static = run_static(load_workspace(tmp_path), AuditConfig())
    (finding,) = [f for f in static.all_findings() if f.rule == "legacy-tensor-ctor"]
    assert (finding.data["cell"], finding.data["cell_line"]) == (1, 2)
    assert finding.message.endswith("(file-wide, also: seq2seq.ipynb:cell 3:2)")
    (other,) = finding.data["related"]
    assert (other["cell"], other["cell_line"]) == (3, 2)


def test_project_wide_advice_names_another_notebooks_places_by_cell(tmp_path: Path) -> None:
    """A GAT project (held out): the project-wide `unfused-optimizer` named its place in the
    other notebook by the line of that notebook's concatenated cells (`PPI.ipynb:833`)."""
    from torchdoctor.agent.config import AuditConfig
    from torchdoctor.agent.gather import run_static

    build = "model = torch.nn.Linear(2, 1).cuda()\nopt = torch.optim.Adam(model.parameters())"
    for name in ("cora", "ppi"):
        cells = _notebook(("code", "import torch"), ("markdown", "# GAT"), ("code", build))
        (tmp_path / f"{name}.ipynb").write_text(cells)
    static = run_static(load_workspace(tmp_path), AuditConfig())

    (finding,) = [f for f in static.all_findings() if f.rule == "unfused-optimizer"]
    other_file = ({"cora.ipynb", "ppi.ipynb"} - {finding.file}).pop()
    assert finding.message.endswith(f"(project-wide, also: {other_file}:cell 3:2)")
    (other,) = finding.data["related"]
    assert (other["file"], other["cell"], other["cell_line"]) == (other_file, 3, 2)


_EVALUATED_BY_A_HELPER = (
    "import torch\nfrom torch import nn\n"
    "def get_net(n):\n    return nn.Sequential(nn.Linear(n, 1))\n"
    "def log_rmse(net, features, labels):\n"
    "    preds = torch.clamp(net(features), 1, float('inf'))\n"
    "    return torch.sqrt(nn.functional.mse_loss(preds.log(), labels.log())).item()\n"
    "def train(net, loader, train_features, train_labels, test_features, test_labels):\n"
    "    optimizer = torch.optim.Adam(net.parameters())\n"
    "    train_ls, test_ls = [], []\n"
    "    for epoch in range(10):\n"
    "        for X, y in loader:\n"
    "            optimizer.zero_grad()\n"
    "            nn.functional.mse_loss(net(X), y).backward()\n"
    "            optimizer.step()\n"
    "        train_ls.append(log_rmse(net, train_features, train_labels))\n"
    "        test_ls.append(log_rmse(net, test_features, test_labels))\n"
    "    return train_ls, test_ls\n"
)
_DROPOUT_MODEL = (
    "import torch\nfrom torch import nn\n"
    "class MLP(nn.Module):\n"
    "    def __init__(self):\n        super().__init__()\n"
    "        self.body = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2))\n"
    "    def forward(self, x):\n        return self.body(x)\n"
)


@pytest.mark.parametrize("dropout_in", ["mlp.ipynb", "mlp.py"])
def test_another_notebooks_layers_do_not_reach_a_notebook(tmp_path: Path, dropout_in: str) -> None:
    """d2l's house-price notebook evaluates a model of layers it cannot see (a helper's
    parameter) with no `.eval()`: only layers that may reach it can make that matter, its
    own and those of importable modules, never another notebook's (nothing imports one)."""
    files = [
        ("house_prices.ipynb", notebook_source(_notebook(("code", _EVALUATED_BY_A_HELPER))).text)
    ]
    model = _DROPOUT_MODEL
    files.append(
        (
            dropout_in,
            notebook_source(_notebook(("code", model))).text
            if dropout_in.endswith(".ipynb")
            else model,
        )
    )
    config = EngineConfig(select=frozenset({"eval-without-eval-mode"}))
    found = {
        f.file
        for f in analyse_files(files, config, workers=1).all_findings()
        if f.rule == "eval-without-eval-mode"
    }
    assert found == (set() if dropout_in.endswith(".ipynb") else {"house_prices.ipynb"})
