"""The PyTorch API change table (`torch_api.json`) as typed rows, and the targeted torch release.

`target_torch` answers "which torch does the audited code run on": the user's setting
(`EngineConfig.target_torch`) or, when unset, the installed torch.
"""

from __future__ import annotations

import importlib.metadata
import re
from functools import cache

from pydantic import BaseModel, ConfigDict, field_validator

from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.checks.data import load_table

Version = tuple[int, int]


def parse_version(text: str) -> Version:
    """'2.6' -> (2, 6); '2.13.0+cpu' -> (2, 13)."""
    match = re.match(r"(\d+)\.(\d+)", text)
    if match is None:
        raise ValueError(f"not a version: {text!r}")
    return int(match.group(1)), int(match.group(2))


def format_version(version: Version) -> str:
    return f"{version[0]}.{version[1]}"


class ApiChange(BaseModel):
    """One row: a qualified name and the releases that deprecated/removed it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    deprecated: Version | None = None
    removed: Version | None = None
    replacement: str = ""

    @field_validator("deprecated", "removed", mode="before")
    @classmethod
    def _version(cls, value: object) -> object:
        return parse_version(value) if isinstance(value, str) else value


class DefaultChange(BaseModel):
    """A keyword argument whose default value changed in a release."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    argument: str
    changed: Version
    old: str
    new: str

    @field_validator("changed", mode="before")
    @classmethod
    def _version(cls, value: object) -> object:
        return parse_version(value) if isinstance(value, str) else value


class TorchApiTable(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    removed: tuple[ApiChange, ...]
    deprecated: tuple[ApiChange, ...]
    renamed: tuple[ApiChange, ...]
    default_changes: tuple[DefaultChange, ...]

    def default_change(self, name: str, argument: str) -> DefaultChange:
        return next(c for c in self.default_changes if c.name == name and c.argument == argument)


@cache
def torch_api() -> TorchApiTable:
    return TorchApiTable.model_validate(load_table("torch_api.json"))


@cache
def rows_by_name(section: str) -> dict[str, ApiChange]:
    rows: tuple[ApiChange, ...] = getattr(torch_api(), section)
    return {row.name: row for row in rows}


@cache
def installed_torch() -> Version | None:
    try:
        return parse_version(importlib.metadata.version("torch"))
    except importlib.metadata.PackageNotFoundError:
        return None


def target_torch(config: EngineConfig) -> Version | None:
    """The torch release the audited code targets; None when neither set nor installed."""
    return config.target_torch or installed_torch()


def callee_names(section: str, aliases: dict[str, str]) -> frozenset[str]:
    """Last name parts a call of a `section` row can have in a module with these import
    aliases (`torch.solve(...)` -> 'solve'; `from torch import solve as s` -> 's')."""
    rows = rows_by_name(section)
    names = {name.rsplit(".", 1)[-1] for name in rows}
    names |= {alias for alias, target in aliases.items() if target in rows}
    return frozenset(names)
