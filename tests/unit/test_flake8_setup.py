"""flake8 set up once in a warm process: its plugins found once, its bundled checkers skipped
where the run selects none of their codes, and what it prints unchanged."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path
from typing import Any

import pytest

from torchdoctor.agent.checks.linters import flake8_setup, warm
from torchdoctor.agent.checks.linters.process import run_tool
from torchdoctor.agent.checks.linters.torchfix import FORMAT, TorchFixAdapter

finder: Any = pytest.importorskip("flake8.plugins.finder")
application: Any = importlib.import_module("flake8.main.application")
FLAKE8 = str(Path(sys.executable).parent / "flake8")

# A training script as people write them: TorchFix findings (an unsafe load, a deprecated
# call), one of them silenced with noqa, beside what only pyflakes and pycodestyle report
# (an unused import, a long line, a bad escape, a complex function).
SCRIPT = """\
import os
import torch
from torch.utils.data import DataLoader


def load(path):
    state = torch.load(path)
    legacy = torch.load(path + ".old")  # noqa: TOR102
    pattern = "\\d+"
    return state, legacy, pattern


def batches(dataset, size):
    return DataLoader(dataset, batch_size=size)


def grid(a, b, c, d):
    if a:
        if b:
            return 1
        elif c:
            return 2
        elif d:
            return 3
""" + (
    "    return torch.solve(torch.eye(2), torch.eye(2))  # a long line" + " that goes on" * 5 + "\n"
)


@pytest.fixture
def prepared(monkeypatch: pytest.MonkeyPatch) -> None:
    """`prepare` in this process, undone after the test."""
    monkeypatch.setattr(finder, "_find_importlib_plugins", finder._find_importlib_plugins)
    app = application.Application
    monkeypatch.setattr(app, "make_file_checker_manager", app.make_file_checker_manager)
    assert flake8_setup.prepare()


@pytest.fixture
def warm_flake8(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(warm, "_entries", {})
    if "flake8" not in warm.preload(["flake8"]):
        pytest.skip("flake8 is not installed next to this interpreter")


def flake8_output(argv: list[str], folder: Path) -> tuple[int, str]:
    output = run_tool(argv, folder, 120)
    return output.returncode, output.stdout


def test_a_warm_run_prints_what_a_started_flake8_prints(
    warm_flake8: None, prepared: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "train.py").write_text(SCRIPT)
    runs = [
        TorchFixAdapter(120).command(FLAKE8, ["train.py"], tmp_path),  # TorchFix alone
        [FLAKE8, "--isolated", "--select=F401,W605,TOR1", f"--format={FORMAT}", "train.py"],
        [FLAKE8, "--isolated", "--max-complexity=2", f"--format={FORMAT}", "train.py"],
    ]
    forked = [flake8_output(argv, tmp_path) for argv in runs]
    monkeypatch.setattr(warm, "_entries", {})
    started = [flake8_output(argv, tmp_path) for argv in runs]
    assert forked == started
    torchfix, selected, everything = (stdout for _code, stdout in forked)
    assert "TOR102" in torchfix and ":8::" not in torchfix  # the noqa holds
    assert "F401" not in torchfix and "E501" not in torchfix
    assert "F401" in selected and "W605" in selected and "E501" not in selected
    assert all(code in everything for code in ("F401", "E501", "W605", "C901", "TOR102"))


def test_bundled_checkers_run_only_where_the_selection_may_keep_their_codes(
    warm_flake8: None,
) -> None:
    def plugin(package: str, entry: str) -> Any:
        return argparse.Namespace(plugin=argparse.Namespace(package=package), entry_name=entry)

    pyflakes, logical = plugin("pyflakes", "F"), plugin("pycodestyle", "E")
    physical = plugin("pycodestyle", "W")
    mccabe, torchfix = plugin("mccabe", "C90"), plugin("TorchFix", "TOR")
    other = plugin("flake8-bugbear", "B")

    def kept(select: list[str] | None, extend: list[str] | None = None) -> list[str]:
        options = argparse.Namespace(select=select, extend_select=extend)
        return [
            p.entry_name
            for p in (pyflakes, logical, physical, mccabe, torchfix, other)
            if flake8_setup.may_report(p, options)
        ]

    assert kept(["TOR0", "TOR1"]) == ["TOR", "B"]  # third-party checkers always run
    assert kept(None) == ["F", "E", "W", "C90", "TOR", "B"]  # flake8's default: all
    assert kept(["TOR1"], ["F401"]) == ["F", "TOR", "B"]
    assert kept(["W605"]) == ["E", "W", "TOR", "B"]  # logical-line checks report W6xx
    assert kept(["C"]) == ["C90", "TOR", "B"]
    assert kept(["E", "F"]) == ["F", "E", "W", "TOR", "B"]


def test_the_installed_plugins_are_found_once(
    warm_flake8: None, prepared: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = list(finder._find_importlib_plugins())
    assert any(p.entry_point.name == "TOR" for p in found)

    def no_more_walks() -> list[object]:
        raise AssertionError("the installed distributions were walked again")

    monkeypatch.setattr(finder.importlib.metadata, "distributions", no_more_walks)
    options = finder.parse_plugin_options(
        finder.configparser.RawConfigParser(), ".", enable_extensions=None, require_plugins=None
    )
    assert finder.find_plugins(finder.configparser.RawConfigParser(), options) == sorted(found)
