"""Dependency manifests: pins read from real manifest files, with the lines they sit on."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchdoctor.agent.checks.manifests import (
    Pin,
    find_manifests,
    is_manifest,
    parse_manifest,
    parse_manifests,
)

FIXTURES = Path(__file__).parents[1] / "fixtures" / "manifests"


@pytest.fixture(scope="module")
def pins() -> dict[tuple[str, str], Pin]:
    return {(p.file, p.name): p for p in parse_manifests(find_manifests(FIXTURES))}


def test_finds_every_manifest_kind_in_subfolders() -> None:
    assert sorted(find_manifests(FIXTURES)) == [
        "cfg/setup.cfg",
        "conda/environment.yml",
        "locked/pyproject.toml",
        "locked/uv.lock",
        "pyproject.toml",
        "requirements-base.txt",
        "requirements.txt",
    ]


def test_skips_virtualenvs(tmp_path: Path) -> None:
    (tmp_path / ".venv" / "lib").mkdir(parents=True)
    (tmp_path / ".venv" / "lib" / "requirements.txt").write_text("torch==1.0\n")
    (tmp_path / "requirements-dev.txt").write_text("pytest\n")
    assert list(find_manifests(tmp_path)) == ["requirements-dev.txt"]


def test_exclude_globs_leave_manifests_out() -> None:
    found = find_manifests(FIXTURES, exclude=["conda/**", "locked/*", "requirements-*.txt"])
    assert sorted(found) == ["cfg/setup.cfg", "pyproject.toml", "requirements.txt"]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("requirements.txt", True),
        ("deps/requirements-gpu.txt", True),
        ("requirements/base.txt", True),
        ("pyproject.toml", True),
        ("env/environment-cuda.yml", True),
        ("uv.lock", True),
        ("setup.py", True),
        ("poetry.lock", True),
        ("pylock.toml", True),
        ("notes.txt", False),
        ("config.yml", False),
    ],
)
def test_manifest_names(path: str, expected: bool) -> None:
    assert is_manifest(path) is expected


def test_requirements_pins_keep_line_specifier_and_local_version(pins: dict) -> None:
    torch = pins[("requirements.txt", "torch")]
    assert (torch.line, torch.specifier, torch.exact_version) == (4, "==2.5.1+cu121", "2.5.1+cu121")
    assert torch.raw == "torch==2.5.1+cu121  # CUDA build"
    assert pins[("requirements.txt", "torchvision")].specifier == ">=0.20"
    assert pins[("requirements.txt", "numpy")].specifier == ""


def test_requirements_continuations_hashes_options_and_urls(pins: dict) -> None:
    pandas = pins[("requirements.txt", "pandas")]
    assert (pandas.line, pandas.exact_version) == (7, "2.2.2")
    assert pins[("requirements.txt", "mylib")].direct
    names = {name for file, name in pins if file == "requirements.txt"}
    assert names == {"torch", "torchvision", "numpy", "pandas", "mylib"}  # no -r/-e/garbage


def test_pyproject_dependencies_extras_and_dependency_groups(pins: dict) -> None:
    assert pins[("pyproject.toml", "torch")].line in (5, 13)
    from_project = parse_manifest("pyproject.toml", (FIXTURES / "pyproject.toml").read_text())
    assert [(p.name, p.line, p.section) for p in from_project] == [
        ("torch", 5, "project.dependencies"),
        ("numpy", 6, "project.dependencies"),
        ("pytest", 10, "optional:dev"),
        ("fastapi", 12, "optional:serve"),
        ("torch", 13, "optional:serve"),
        ("pytest", 17, "group:test"),
        ("ruff", 18, "group:lint"),
    ]


def test_setup_cfg_install_requires_and_extras(pins: dict) -> None:
    assert pins[("cfg/setup.cfg", "torch")].line == 6
    assert pins[("cfg/setup.cfg", "torch")].specifier == "~=2.4.0"
    assert pins[("cfg/setup.cfg", "matplotlib")].section == "optional:plots"


def test_conda_specs_become_pep440_and_pytorch_is_torch(pins: dict) -> None:
    assert pins[("conda/environment.yml", "torch")].specifier == "==2.4.*"
    assert pins[("conda/environment.yml", "numpy")].specifier == ">=1.26"
    assert pins[("conda/environment.yml", "wandb")].section == "conda-pip"
    assert pins[("conda/environment.yml", "timm")].line == 13
    assert ("conda/environment.yml", "python") not in pins
    assert ("conda/environment.yml", "pip") not in pins


def test_unreadable_manifests_give_no_pins() -> None:
    assert parse_manifest("pyproject.toml", "[project\nbroken") == []
    assert parse_manifest("setup.cfg", "no section header") == []


def test_lock_files_give_exact_versions_at_the_package_name_line(pins: dict) -> None:
    torch = pins[("locked/uv.lock", "torch")]
    assert (torch.line, torch.exact_version, torch.section) == (19, "2.5.1", "lock")
    assert pins[("locked/uv.lock", "numpy")].line == 14  # not the `{ name = "numpy" }` reference
    assert pins[("locked/uv.lock", "locked-app")].direct  # the project itself, from "."


def test_poetry_lock_and_pylock_formats() -> None:
    poetry = '[[package]]\nname = "torch"\nversion = "2.4.0"\ndescription = ""\n'
    pylock = 'lock-version = "1.0"\n[[packages]]\nname = "torch"\nversion = "2.7.0"\n'
    assert [(p.name, p.specifier, p.line) for p in parse_manifest("poetry.lock", poetry)] == [
        ("torch", "==2.4.0", 2)
    ]
    assert [(p.name, p.specifier, p.line) for p in parse_manifest("pylock.toml", pylock)] == [
        ("torch", "==2.7.0", 3)
    ]


def test_setup_py_literal_install_requires_and_extras() -> None:
    # the shape of an educational transformer package (pbloem/former, held out): its only
    # manifest besides a conda file is a setup.py listing its imports
    text = (
        "from setuptools import setup\n"
        "\n"
        "setup(name='former',\n"
        "      packages=['former'],\n"
        "      install_requires=[\n"
        "            'torch>=2.6',\n"
        "            'tensorboard'\n"
        "      ],\n"
        "      extras_require={'plots': ['matplotlib']},\n"
        "      zip_safe=False)\n"
    )
    pins = {p.name: p for p in parse_manifest("setup.py", text)}
    assert sorted(pins) == ["matplotlib", "tensorboard", "torch"]
    assert (pins["torch"].line, pins["torch"].specifier) == (6, ">=2.6")
    assert pins["tensorboard"].section == "install_requires"
    assert pins["matplotlib"].section == "optional:plots"
    # computed at build time, or not Python at all: nothing read, never an error
    assert parse_manifest("setup.py", "setup(install_requires=read('req.txt'))\n") == []
    assert parse_manifest("setup.py", "setup(\n") == []
    # a hostile one the parser runs out of memory or stack on: nothing read, no traceback
    assert parse_manifest("setup.py", "x = " + "-" * 100_000 + "1\n") == []
