"""What the caller asked an audit for, and the configuration in force once the project's
`[tool.torchdoctor]` is read. Part of the audit's state: a resumed audit runs with the options
it started with."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from torchdoctor.agent.artifacts.models import ArtifactKind
from torchdoctor.agent.checks.catalogue import unknown_names_message
from torchdoctor.agent.config import (
    AuditConfig,
    ConfigError,
    ProjectConfig,
    exclude_prefix,
    find_project_root,
    load_project_config,
)
from torchdoctor.agent.workspace import Workspace, load_paths, load_workspace

DEFAULT_FIX_TIME_S = 1200.0
"""Twenty minutes of verification: on an H100, kuangliu/pytorch-cifar's three eager fixes took
39, 214 and 126 s and the audit had run 9 minutes without a report when its time ran out."""


class AuditChoices(BaseModel):
    """What any caller may choose about an audit: the CLI's options and the API's, one model."""

    model_config = ConfigDict(extra="forbid")

    offline: bool = False
    lang: Literal["en", "fr"] | None = None
    select: list[str] = Field(default_factory=list)
    ignore: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    torch_version: str | None = Field(
        None, pattern=r"^\d+\.\d+(\.\d+)?([a-z0-9.+-]*)$", description="e.g. 2.8 or 2.8.0+cu128"
    )
    run: list[str] = Field(default_factory=list, description="commands to run under the probes")
    discover: bool = False
    steps: int = Field(20, ge=1, le=10_000)
    probe_compile: bool = False
    probes: Literal["cheap", "full"] = Field(
        "full",
        description="full: the run, then seeded determinism re-runs and the export check; "
        "cheap: the run alone (the report names what was skipped)",
    )
    linters: bool | None = Field(None, description="run peer linters (default: config, on)")
    peers: Literal["curated", "all"] | None = Field(
        None, description="peer codes shown as findings (default: config, curated)"
    )
    mypy: bool = False
    fix: bool = Field(False, description="propose fixes and verify them (by running with --run)")
    fix_time: float = Field(
        DEFAULT_FIX_TIME_S,
        gt=0,
        le=7 * 24 * 3600,
        description="seconds the fixes' verifications may take in all: none is started that "
        "those so far say would end past it (it stays proposed, unverified, with the reason)",
    )
    artifacts: list[ArtifactKind] = Field(
        default_factory=list,
        description="artifacts to generate, run in the sandbox and offer (tests, card, drift)",
    )


class AuditOptions(AuditChoices):
    """What the caller asked for, plus what only the host decides (paths, sandbox, network,
    writing files); unset values fall back to `[tool.torchdoctor]`."""

    target: Path
    """The file or folder audited; with `paths`, their common root (the report's root)."""
    paths: list[Path] = Field(
        default_factory=list, description="several files/folders under `target` to audit"
    )
    config: Path | None = Field(None, description="config file instead of the nearest one")
    force_exclude: bool = Field(False, description="`exclude` holds even for named files")
    search_parents: bool = Field(
        True, description="look for the config above the audited folder (off for uploads)"
    )
    static_only: bool = Field(False, description="ignore the configuration's `run` commands")
    ledger: Path | None = None
    write_ledger: bool = True
    sandbox: Literal["auto", "local", "docker"] | None = Field(
        None, description="auto | local | docker (default: env)"
    )
    online: bool = Field(False, description="let pip-audit query the vulnerability database")
    apply: bool = Field(False, description="write verified fixes to the files (implies fix)")
    force: bool = Field(False, description="apply even on a dirty git work tree")

    @property
    def fixing(self) -> bool:
        return self.fix or self.apply


def project_of(options: AuditOptions) -> ProjectConfig:
    return load_project_config(
        find_project_root(options.target), options.config, search_parents=options.search_parents
    )


def effective_config(options: AuditOptions, project: ProjectConfig) -> AuditConfig:
    """The project's config with the options over it; unknown rule ids are a usage error."""
    config = project.config
    for names, where in (
        (options.select + options.ignore, "--select/--ignore"),
        (config.select + config.ignore, "[tool.torchdoctor] select/ignore"),
    ):
        if message := unknown_names_message(names, where):
            raise ConfigError(message)
    updates: dict[str, Any] = {
        "select": config.select + options.select,
        "ignore": config.ignore + options.ignore,
        "exclude": config.exclude + options.exclude,
    }
    if options.lang:
        updates["lang"] = options.lang
    if options.torch_version:
        updates["torch_version"] = options.torch_version
    if options.static_only:
        updates["run"] = []
    updates["run_budget"] = config.run_budget.capped()
    if linters_off_by_env():
        updates["linters"] = False
    if options.linters is not None:
        updates["linters"] = options.linters
    if options.peers is not None:
        updates["peers"] = options.peers
    return config.model_copy(update=updates)


def linters_off_by_env() -> bool:
    """`TORCHDOCTOR_LINTERS` turns the peers off (0, false, no, off)."""
    return os.environ.get("TORCHDOCTOR_LINTERS", "").strip().lower() in ("0", "false", "no", "off")


def snapshot(options: AuditOptions, config: AuditConfig, project: ProjectConfig) -> Workspace:
    """The audited files, read once."""
    prefix = exclude_prefix(project, find_project_root(options.target))
    if options.paths or options.force_exclude:
        return load_paths(
            options.paths or [options.target],
            config.exclude,
            config.max_file_bytes,
            exclude_prefix=prefix,
            force_exclude=options.force_exclude,
        )
    return load_workspace(
        options.target, config.exclude, config.max_file_bytes, exclude_prefix=prefix
    )
