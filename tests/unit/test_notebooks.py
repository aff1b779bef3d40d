"""Notebooks as Python: code cells concatenated, IPython syntax blanked, lines mapped back."""

from __future__ import annotations

import json

import pytest

from torchdoctor.agent.notebooks import NotebookError, cell_of, notebook_source


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
