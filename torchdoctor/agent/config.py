"""Audit options: `[tool.torchdoctor]` of the project's pyproject.toml, then the CLI.

The project's configuration is found as ruff finds its own: from the audited folder up to the
nearest `pyproject.toml` that has a `[tool.torchdoctor]` table, never above the filesystem root
and never through a link that leaves the folder it sits in; `--config FILE` overrides the search.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from torchdoctor.agent.models import Severity
from torchdoctor.agent.safefs import file_tree

MAX_CONFIG_BYTES = 2_000_000


class ConfigError(ValueError):
    """The project's `[tool.torchdoctor]` table is invalid."""


class RunBudget(BaseModel):
    """What one instrumented run may use: the audit's runs and fix verifications alike."""

    model_config = ConfigDict(extra="forbid")

    wall_s: float = Field(300.0, gt=0)
    cpu_s: int | None = Field(None, gt=0, description="None: four times the wall time")
    memory_mb: int = Field(8192, gt=0)
    processes: int = Field(256, gt=0, description="per rank")
    disk_mb: int = Field(4096, gt=0)
    file_size_mb: int = Field(256, gt=0)
    open_files: int = Field(1024, gt=0)

    def capped(self) -> RunBudget:
        """This budget, no field above the default: a project's `[tool.torchdoctor.run-budget]`
        comes from the audited tree, which may lower what its runs get but never raise it."""
        default = RunBudget()
        return RunBudget.model_validate(
            {
                name: value
                if value is None or getattr(default, name) is None
                else min(value, getattr(default, name))
                for name, value in self.model_dump().items()
            }
        )


class GroupColumn(BaseModel):
    """`[tool.torchdoctor.groups]`: where each evaluated row's group (a sensitive attribute)
    is, so the instrumented run computes per-group metrics of the script's evaluation outputs
    (item 12.1): `batch` (the position of the groups' tensor in each batch) or `feature` (a
    column of the model's first input); `labels`: the labels' position in the batch."""

    model_config = ConfigDict(extra="forbid")

    batch: int | None = Field(None, ge=0, le=7)
    feature: int | None = Field(None, ge=0)
    labels: int = Field(1, ge=0, le=7)

    @model_validator(mode="after")
    def _one_place(self) -> GroupColumn:
        if (self.batch is None) == (self.feature is None):
            raise ValueError("groups: give exactly one of `batch` and `feature`")
        return self

    @property
    def probe_spec(self) -> str:
        """As the probes take it: `batch:2:1`, `feature:3:1`."""
        if self.batch is not None:
            return f"batch:{self.batch}:{self.labels}"
        return f"feature:{self.feature}:{self.labels}"


class AuditConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    exclude: list[str] = Field(default_factory=list, description="glob patterns (relative paths)")
    select: list[str] = Field(default_factory=list, description="opt-in rules, points or 'all'")
    ignore: list[str] = Field(default_factory=list)
    fail_on: Severity | None = None
    torch_version: str | None = Field(None, pattern=r"^\d+\.\d+(\.\d+)?([a-z0-9.+-]*)$")
    lang: Literal["en", "fr"] = "en"
    max_file_bytes: int = 2_000_000
    run: list[str] = Field(default_factory=list, description="commands whose runs feed the probes")
    run_budget: RunBudget = Field(default_factory=RunBudget)
    groups: GroupColumn | None = None
    linters: bool = True
    peers: Literal["curated", "all"] = Field(
        "curated", description="peer linter codes shown as findings: the curated list, or all"
    )
    llm: dict[str, Any] = Field(default_factory=dict)
    run_max_severity: Severity = Field(
        Severity.HIGH,
        description="highest severity a finding from run evidence alone may have (a forged "
        "evidence file cannot fail a build); a static finding or a second run lifts it",
    )


class ProjectConfig(BaseModel):
    """A loaded configuration and the folder its relative paths (`exclude`) start from."""

    model_config = ConfigDict(extra="forbid")

    config: AuditConfig
    source: Path | None = Field(None, description="the file it came from; None: defaults")
    base: Path = Field(description="the folder `exclude` patterns are relative to")


def find_project_root(target: Path) -> Path:
    """The audited folder itself, or a single file's folder."""
    return target if target.is_dir() else target.parent


def _read_toml(path: Path) -> dict[str, Any]:
    """A TOML file read through the guarded layer: a link leaving its folder, a FIFO or a
    hard-linked file is refused, never followed."""
    tree, name = file_tree(path)
    try:
        return tomllib.loads(tree.read_text(name, MAX_CONFIG_BYTES))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err
    except OSError as err:
        raise ConfigError(f"{path}: unreadable: {err.strerror or err}") from err


def _table_of(document: dict[str, Any]) -> dict[str, Any] | None:
    tool = document.get("tool")
    table = tool.get("torchdoctor") if isinstance(tool, dict) else None
    return table if isinstance(table, dict) else None


def _stays_in_folder(candidate: Path) -> bool:
    """A regular file, or a link that resolves inside the folder it sits in."""
    if not candidate.is_file():
        return False
    if not candidate.is_symlink():
        return True
    return candidate.resolve().is_relative_to(candidate.parent.resolve())


def discover_config(start: Path, *, search_parents: bool = True) -> Path | None:
    """The nearest `pyproject.toml` with `[tool.torchdoctor]`, from `start` up to the root
    (only `start` itself without `search_parents`: a service auditing uploaded code must not
    pick up a configuration from its own folders above the upload).

    The walk is lexical (`start` made absolute, links in it not resolved), so a symbolic link to
    the audited folder does not lead the search into the link's target's parents.
    """
    folder = Path(os.path.abspath(start))
    for candidate_dir in (folder, *folder.parents) if search_parents else (folder,):
        candidate = candidate_dir / "pyproject.toml"
        if not _stays_in_folder(candidate):
            continue
        try:
            document = _read_toml(candidate)
        except ConfigError:
            if candidate_dir == folder:
                raise  # the audited folder's own file is broken: say so
            continue  # an unrelated broken file above the project is not ours to judge
        if _table_of(document) is not None:
            return candidate
    return None


def parse_config(path: Path) -> AuditConfig:
    """`[tool.torchdoctor]` of a pyproject.toml, or the top level of any other TOML file."""
    document = _read_toml(path)
    table = _table_of(document)
    if table is None:
        table = {} if path.name == "pyproject.toml" or "tool" in document else document
    table = {key.replace("-", "_"): value for key, value in table.items()}
    try:
        return AuditConfig.model_validate(table)
    except ValidationError as err:
        raise ConfigError(f"{path} [tool.torchdoctor]: {err}") from err


def load_project_config(
    root: Path, config_file: Path | None = None, *, search_parents: bool = True
) -> ProjectConfig:
    """The configuration in force for an audit rooted at `root`."""
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"{config_file}: no such configuration file")
        return ProjectConfig(
            config=parse_config(config_file), source=config_file, base=config_file.parent
        )
    found = discover_config(root, search_parents=search_parents)
    if found is None:
        return ProjectConfig(config=AuditConfig(), base=root)
    return ProjectConfig(config=parse_config(found), source=found, base=found.parent)


def load_config(root: Path, config_file: Path | None = None) -> AuditConfig:
    return load_project_config(root, config_file).config


def exclude_prefix(project: ProjectConfig, root: Path) -> str:
    """How the audited root is spelled relative to the config's folder ('' when the same, or
    when the root lies outside it), so that `exclude` patterns keep their project meaning."""
    base = Path(os.path.abspath(project.base))
    here = Path(os.path.abspath(root))
    if here == base or not here.is_relative_to(base):
        return ""
    return here.relative_to(base).as_posix() + "/"
