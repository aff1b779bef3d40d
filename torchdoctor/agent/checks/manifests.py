"""Dependency manifests: find them in a project and read the pins they declare, with lines.

Supply-chain checks (vulnerable pins, unpinned dependencies, pip-audit) need to know which
packages a project asks for and where it says so. This module reads requirements*.txt,
pyproject.toml (`[project]` dependencies, optional dependencies, dependency groups), setup.cfg
and setup.py (`install_requires`, `extras_require`; in setup.py only what is written as
literals in the `setup()` call), conda environment files and lock files (uv.lock,
poetry.lock, pylock.toml), and returns one `Pin` per declared requirement. A line it cannot
read is skipped, never fatal: manifests are hand-written. `declared_floor` reads the oldest
release of a package the project allows, which decides whether a changed default (torch.load's
weights_only) already holds everywhere the code runs.
"""

from __future__ import annotations

import ast
import configparser
import fnmatch
import os
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict

MANIFEST_PATTERNS: tuple[str, ...] = (
    "requirements*.txt",
    "requirements/*.txt",
    "pyproject.toml",
    "setup.cfg",
    "setup.py",
    "environment.yml",
    "environment.yaml",
    "environment*.yml",
    "environment*.yaml",
    "uv.lock",
    "poetry.lock",
    "pylock.toml",
    "pylock.*.toml",
)
LOCAL_SOURCES = frozenset({"editable", "virtual", "directory", "path", "git", "url"})
SKIPPED_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".venv",
        "venv",
        "env",
        ".tox",
        ".nox",
        "node_modules",
        "__pycache__",
        "site-packages",
        "build",
        "dist",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
    }
)
MAX_MANIFEST_BYTES = 1_000_000
CONDA_NAMES = {"pytorch": "torch"}
CONDA_NOT_PACKAGES = frozenset({"python", "pip"})  # the environment's runtime, not dependencies
_EXACT = re.compile(r"^===?\s*([^,*;\s]+)$")
_CONDA_SPEC = re.compile(r"^(?:[\w.\-]+::)?([A-Za-z0-9_.\-]+)\s*(.*)$")


class Pin(BaseModel):
    """One declared requirement: what it names, what versions it allows, where it is written."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    specifier: str
    file: str
    line: int
    raw: str
    section: str
    direct: bool = False

    @property
    def exact_version(self) -> str | None:
        """The single version an `==X` / `===X` pin allows (no wildcard), else None."""
        match = _EXACT.match(self.specifier)
        return match.group(1) if match else None


_LOWER_BOUNDS = frozenset({">=", ">", "==", "===", "~="})


def declared_floor(pins: Iterable[Pin], name: str) -> tuple[int, int] | None:
    """The oldest release (major, minor) of `name` that the project can run on: the lowest
    of its declarations' lower bounds. None when nothing declares it, or when one declaration
    has no lower bound (`torch`, `torch<3`), since the project then also runs on old releases."""
    floors: list[tuple[int, int]] = []
    for pin in pins:
        if pin.name != name:
            continue
        floor = _lower_bound(pin.specifier)
        if floor is None:
            return None
        floors.append(floor)
    return min(floors) if floors else None


def _lower_bound(specifier: str) -> tuple[int, int] | None:
    try:
        specs = SpecifierSet(specifier)
    except InvalidSpecifier:
        return None
    bounds: list[tuple[int, int]] = []
    for spec in specs:
        if spec.operator not in _LOWER_BOUNDS:
            continue
        try:
            version = Version(spec.version.removesuffix(".*"))
        except InvalidVersion:
            continue
        bounds.append((version.major, version.minor))
    return max(bounds) if bounds else None


def is_manifest(relpath: str) -> bool:
    path = PurePosixPath(relpath)
    tail = f"{path.parent.name}/{path.name}" if path.parent.name else path.name
    return any(fnmatch.fnmatch(path.name, p) or fnmatch.fnmatch(tail, p) for p in MANIFEST_PATTERNS)


def find_manifests(root: Path, exclude: Sequence[str] = ()) -> dict[str, str]:
    """Every manifest under `root` (relative POSIX path -> text), skipping virtualenvs, caches
    and paths matching an `exclude` glob (`[tool.torchdoctor] exclude`, e.g. 'tests/**')."""
    found: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info"))
        for name in sorted(files):
            path = Path(folder, name)
            rel = path.relative_to(root).as_posix()
            if not is_manifest(rel) or any(fnmatch.fnmatch(rel, glob) for glob in exclude):
                continue
            if path.stat().st_size > MAX_MANIFEST_BYTES:
                continue
            try:
                found[rel] = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
    return found


def parse_manifests(manifests: Mapping[str, str]) -> list[Pin]:
    return [pin for path, text in sorted(manifests.items()) for pin in parse_manifest(path, text)]


def parse_manifest(path: str, text: str) -> list[Pin]:
    """The pins declared in one manifest; the file kind is chosen by its name."""
    name = PurePosixPath(path).name
    if name == "pyproject.toml":
        return list(_pyproject_pins(path, text))
    if name == "setup.cfg":
        return list(_setup_cfg_pins(path, text))
    if name == "setup.py":
        return list(_setup_py_pins(path, text))
    if name.endswith((".lock", ".toml")):
        return list(_lock_pins(path, text))
    if name.endswith((".yml", ".yaml")):
        return list(_conda_pins(path, text))
    return list(_requirements_pins(path, text))


def _pin(requirement: str, path: str, line: int, raw: str, section: str) -> Pin | None:
    try:
        parsed = Requirement(requirement)
    except InvalidRequirement:
        return None
    return Pin(
        name=canonicalize_name(parsed.name),
        specifier=str(parsed.specifier),
        file=path,
        line=line,
        raw=raw.strip(),
        section=section,
        direct=parsed.url is not None,
    )


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Requirement lines joined over backslash continuations, comments removed."""
    pending: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number
        stripped = re.sub(r"(^|\s)#.*$", "", line).rstrip()
        if stripped.endswith("\\"):
            pending.append(stripped[:-1])
            continue
        pending.append(stripped)
        yield start, " ".join(pending).strip()
        pending = []
    if pending:
        yield start, " ".join(pending).strip()


def _requirements_pins(path: str, text: str) -> Iterator[Pin]:
    raw_lines = text.splitlines()
    for number, logical in _logical_lines(text):
        if not logical or logical.startswith("-"):
            continue  # options (-r, -c, -e, --index-url ...) name no pinned package here
        requirement = re.split(r"\s--", logical)[0].strip()  # drop per-line --hash options
        pin = _pin(requirement, path, number, raw_lines[number - 1], "requirements")
        if pin is not None:
            yield pin


def _locate(lines: list[str], needle: str, after: int) -> int:
    """1-based number of the first line at or after `after` that contains `needle`."""
    for index in range(max(0, after - 1), len(lines)):
        if needle in lines[index]:
            return index + 1
    return max(1, after)


def _located_pins(
    path: str, text: str, groups: Iterable[tuple[str, str, list[str]]]
) -> Iterator[Pin]:
    """Pins for `(section, key pattern, requirements)` groups: each requirement's line is
    the first at or after its key's `key =` line that contains its text."""
    lines = text.splitlines()
    for section, header, requirements in groups:
        key = re.compile(rf"^\s*[\"']?{header}[\"']?\s*=")
        cursor = next((n for n, line in enumerate(lines, start=1) if key.match(line)), 1)
        for requirement in requirements:
            number = _locate(lines, requirement, cursor)
            cursor = number
            pin = _pin(requirement, path, number, lines[number - 1] if lines else "", section)
            if pin is not None:
                yield pin


def _pyproject_pins(path: str, text: str) -> Iterator[Pin]:
    """`[project]` dependencies and optional dependencies, and `[dependency-groups]`."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return
    project = document.get("project", {})
    groups: list[tuple[str, str, list[str]]] = []
    dependencies = project.get("dependencies", [])
    if isinstance(dependencies, list):
        groups.append(("project.dependencies", "dependencies", [str(d) for d in dependencies]))
    for table, prefix in (
        (project.get("optional-dependencies"), "optional"),
        (document.get("dependency-groups"), "group"),
    ):
        if not isinstance(table, dict):
            continue
        for key, requirements in table.items():
            if isinstance(requirements, list):
                names = [r for r in requirements if isinstance(r, str)]  # not {include-group}
                groups.append((f"{prefix}:{key}", re.escape(str(key)), names))
    yield from _located_pins(path, text, groups)


def _lock_pins(path: str, text: str) -> Iterator[Pin]:
    """Exact versions from uv.lock / poetry.lock (`[[package]]`) and pylock.toml (`[[packages]]`).

    Packages from a local path, git or URL source are marked direct: no index version to audit.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return
    packages = document.get("package", document.get("packages", []))
    lines = text.splitlines()
    cursor = 1
    for package in packages if isinstance(packages, list) else []:
        name, version = package.get("name"), package.get("version")
        if not isinstance(name, str) or not isinstance(version, str):
            continue
        key = re.compile(rf"^\s*name\s*=\s*[\"']{re.escape(name)}[\"']\s*$")
        cursor = next((n for n in range(cursor, len(lines) + 1) if key.match(lines[n - 1])), 1)
        pin = _pin(f"{name}=={version}", path, cursor, lines[cursor - 1], "lock")
        source = package.get("source", {})
        local = isinstance(source, dict) and bool(LOCAL_SOURCES & set(source))
        if pin is not None:
            yield pin.model_copy(update={"direct": local}) if local else pin


def _setup_cfg_pins(path: str, text: str) -> Iterator[Pin]:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text)
    except configparser.Error:
        return
    groups: list[tuple[str, str, list[str]]] = []
    if parser.has_option("options", "install_requires"):
        requirements = _cfg_list(parser.get("options", "install_requires"))
        groups.append(("install_requires", "install_requires", requirements))
    if parser.has_section("options.extras_require"):
        for extra, value in parser.items("options.extras_require"):
            groups.append((f"optional:{extra}", re.escape(extra), _cfg_list(value)))
    yield from _located_pins(path, text, groups)


def _setup_py_pins(path: str, text: str) -> Iterator[Pin]:
    """`install_requires` and `extras_require` of the `setup(...)` call, where they are
    literals (a list read from a file at build time declares nothing this can read)."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # a hostile setup.py
        return
    lines = text.splitlines()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or _called_name(node.func) != "setup":
            continue
        for keyword in node.keywords:
            if keyword.arg == "install_requires":
                groups = [("install_requires", keyword.value)]
            elif keyword.arg == "extras_require" and isinstance(keyword.value, ast.Dict):
                groups = [
                    (f"optional:{key.value}", value)
                    for key, value in zip(keyword.value.keys, keyword.value.values, strict=True)
                    if isinstance(key, ast.Constant) and isinstance(key.value, str)
                ]
            else:
                continue
            for section, value in groups:
                if not isinstance(value, ast.List | ast.Tuple):
                    continue
                for item in value.elts:
                    if isinstance(item, ast.Constant) and isinstance(item.value, str):
                        raw = lines[item.lineno - 1] if item.lineno <= len(lines) else item.value
                        pin = _pin(item.value, path, item.lineno, raw, section)
                        if pin is not None:
                            yield pin


def _called_name(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def _cfg_list(value: str) -> list[str]:
    items = (re.sub(r"\s#.*$", "", item).strip() for item in re.split(r"[\n;]", value))
    return [item for item in items if item and not item.startswith("#")]


def _conda_pins(path: str, text: str) -> Iterator[Pin]:
    """`dependencies:` of a conda environment file, including its nested `- pip:` list."""
    in_dependencies = False
    pip_indent: int | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        content = re.sub(r"(^|\s)#.*$", "", line).rstrip()
        if not content.strip():
            continue
        indent = len(content) - len(content.lstrip())
        if indent == 0:
            in_dependencies = content.strip() == "dependencies:"
            pip_indent = None
            continue
        item = content.strip()
        if not in_dependencies or not item.startswith("- "):
            continue
        value = item[2:].strip().strip("'\"")
        if value == "pip:":
            pip_indent = indent
            continue
        if pip_indent is not None and indent > pip_indent:
            pin = _pin(value, path, number, line, "conda-pip")
        else:
            pip_indent = None
            pin = _conda_pin(value, path, number, line)
        if pin is not None:
            yield pin


def _conda_pin(spec: str, path: str, line: int, raw: str) -> Pin | None:
    """`pytorch=2.1`, `pytorch 2.1.0 py3.10_cuda`, `conda-forge::numpy>=1.24` as a PEP 440 pin."""
    match = _CONDA_SPEC.match(spec)
    if match is None:
        return None
    name, version = match.group(1), match.group(2).strip()
    if name in CONDA_NOT_PACKAGES:
        return None
    if version and version[0].isdigit():
        version = "=" + version.split()[0]  # `name 2.1` means `name=2.1`
    if version.startswith("=") and not version.startswith("=="):
        fuzzy = version[1:]  # conda's `=2.1` is a prefix match: 2.1.*
        version = "==" + (fuzzy if fuzzy.endswith("*") else f"{fuzzy}.*")
    return _pin(f"{CONDA_NAMES.get(name, name)}{version}", path, line, raw, "conda")
