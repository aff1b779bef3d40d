"""Audit options: `[tool.torchdoctor]` in the audited project's pyproject.toml, then the CLI."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from torchdoctor.agent.models import Severity


class ConfigError(ValueError):
    """The project's `[tool.torchdoctor]` table is invalid."""


class AuditConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    exclude: list[str] = Field(default_factory=list, description="glob patterns (relative paths)")
    select: list[str] = Field(default_factory=list, description="opt-in rules, points or 'all'")
    ignore: list[str] = Field(default_factory=list)
    fail_on: Severity | None = None
    torch_version: str | None = None
    lang: Literal["en", "fr"] = "en"
    max_file_bytes: int = 2_000_000
    run: list[str] = Field(default_factory=list, description="commands whose runs feed the probes")
    linters: bool = True
    llm: dict[str, Any] = Field(default_factory=dict)


def find_project_root(target: Path) -> Path:
    """The audited folder itself, or a single file's folder."""
    return target if target.is_dir() else target.parent


def load_config(root: Path) -> AuditConfig:
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return AuditConfig()
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{pyproject}: not valid TOML: {err}") from err
    table = data.get("tool", {}).get("torchdoctor", {})
    table = {key.replace("-", "_"): value for key, value in table.items()}
    try:
        return AuditConfig.model_validate(table)
    except ValidationError as err:
        raise ConfigError(f"{pyproject} [tool.torchdoctor]: {err}") from err
