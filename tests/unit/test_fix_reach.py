"""Which run reaches a patched file: the static import graph of the audited tree, from each
run's script (absolute imports from the script's folder or the root, relative imports in
packages, packages' `__init__`), and the step the fix's verification records."""

from __future__ import annotations

from pathlib import Path

from torchdoctor.agent.fixes.reach import import_path

TREE = {
    "train.py": "import torch\nfrom model import Net\nfrom utils.data import loader\n",
    "model.py": "from torch import nn\nfrom layers import block\n",
    "layers/__init__.py": "",
    "layers/block.py": "from . import norms\n",
    "layers/norms.py": "import torch\n",
    "utils/__init__.py": "",
    "utils/data.py": "from ..shared import common\n",
    "shared/common.py": "x = 1\n",
    "eval.py": "import json\n",
    "scripts/run.py": "import helper\n",
    "scripts/helper.py": "def f():\n    import lazy_mod\n",
    "scripts/lazy_mod.py": "",
    "broken.py": "import model\ndef (:\n",
}


def text_of(path: str) -> str | None:
    return TREE.get(path)


def test_a_chain_of_imports_is_followed_and_named() -> None:
    assert import_path(text_of, "train.py", "layers/norms.py") == [
        "train.py",
        "model.py",
        "layers/block.py",
        "layers/norms.py",
    ]
    assert import_path(text_of, "train.py", "train.py") == ["train.py"]
    assert import_path(text_of, "train.py", "layers/__init__.py") is not None


def test_relative_imports_climb_packages() -> None:
    assert import_path(text_of, "train.py", "shared/common.py") == [
        "train.py",
        "utils/data.py",
        "shared/common.py",
    ]


def test_imports_resolve_from_the_scripts_folder_even_inside_functions() -> None:
    assert import_path(text_of, "scripts/run.py", "scripts/lazy_mod.py") == [
        "scripts/run.py",
        "scripts/helper.py",
        "scripts/lazy_mod.py",
    ]


def test_a_file_the_script_never_imports_is_not_reached() -> None:
    assert import_path(text_of, "eval.py", "model.py") is None
    assert import_path(text_of, "train.py", "eval.py") is None
    assert import_path(text_of, "broken.py", "model.py") is None, "unparsable: nothing followed"
    assert import_path(text_of, "missing.py", "model.py") is None


def test_the_fix_runs_with_the_first_run_that_reaches_its_file(tmp_path: Path) -> None:
    from torchdoctor.agent.graph import reaching_run
    from torchdoctor.agent.workspace import load_workspace

    for name in ("train.py", "model.py", "eval.py", "notes.py"):
        (tmp_path / name).write_text(TREE.get(name, "x = 1\n"))
    workspace = load_workspace(tmp_path)
    commands = ["python eval.py --quick", "python ./train.py --epochs 1"]
    command, step = reaching_run(workspace, commands, "model.py")
    assert command == ["python", "./train.py", "--epochs", "1"]
    assert step.ok and "train.py -> model.py" in step.detail
    command, step = reaching_run(workspace, commands, "notes.py")
    assert command is None and not step.ok
    assert "no planned run imports notes.py" in step.detail
