"""Packaging hygiene: direct imports declared, young APIs bounded, one constraints file that
pins every runtime dependency and that both Docker images use, shell completion on."""

from __future__ import annotations

import ast
import re
import sys
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from typer.testing import CliRunner

from tests.conftest import REPO
from torchdoctor import __version__
from torchdoctor.agent.cli import app

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
RUNTIME = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
IMPORT_NAMES = {"langgraph": "langgraph", "langchain_core": "langchain-core", "libcst": "libcst"}


def constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    return pins


def third_party_imports() -> set[str]:
    found: set[str] = set()
    for path in (REPO / "torchdoctor").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"torchdoctor", "__future__"}


def test_direct_imports_of_the_graph_stack_are_declared_with_upper_bounds() -> None:
    declared = {canonicalize_name(r.name): r for r in RUNTIME}
    imported = third_party_imports()  # parses every module of the package: once
    for module, distribution in IMPORT_NAMES.items():
        assert module in imported
        requirement = declared[distribution]
        assert any(spec.operator == "<" for spec in requirement.specifier), requirement


def service_image_extras() -> list[str]:
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    match = re.search(r'pip install -c constraints\.txt "\.\[([a-z,]+)\]"', dockerfile)
    assert match is not None, "the service image installs torchdoctor with extras"
    return match.group(1).split(",")


def test_constraints_pin_everything_the_service_image_installs_within_range() -> None:
    pins = constraint_pins()
    extras = PYPROJECT["project"]["optional-dependencies"]
    wanted = RUNTIME + [Requirement(r) for name in service_image_extras() for r in extras[name]]
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name]), (requirement, pins[name])


def test_both_dockerfiles_use_the_constraints() -> None:
    service = (REPO / "Dockerfile").read_text(encoding="utf-8")
    installs = [line for line in service.splitlines() if "pip install" in line]
    assert installs and all("-c constraints.txt" in line for line in installs)
    sandbox = (REPO / "torchdoctor" / "sandbox" / "Dockerfile").read_text(encoding="utf-8")
    assert "constraints.txt" in sandbox and "pip install" not in sandbox
    base = re.search(r"^FROM pytorch/pytorch:(\d+\.\d+\.\d+)-", sandbox, re.MULTILINE)
    assert base is not None and constraint_pins()["torch"] == base.group(1)


def test_shell_completion_is_offered() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert "--install-completion" in result.output and "--show-completion" in result.output


def test_version_has_one_source() -> None:
    assert PYPROJECT["project"]["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "torchdoctor.__version__"
    }
    changelog = (REPO / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "## [Unreleased]" in changelog and f"## [{__version__}]" in changelog
