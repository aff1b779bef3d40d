"""Turns one tool's report (code, file, line, message) into checklist-tagged `Evidence`.

Which checklist items a code backs is data (`checks/data/linter_codes.json`), so adding a
code means editing a table, not an adapter.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict

from torchdoctor.agent.checklist import ITEMS_BY_ID
from torchdoctor.agent.checks.base import numbered_excerpt
from torchdoctor.agent.checks.data import load_table
from torchdoctor.agent.models import Evidence, Severity


class CodeInfo(BaseModel):
    """What one tool code means for the checklist."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    items: tuple[str, ...]
    point: int
    severity: Severity
    concern: str | None = None
    kept: bool = True
    """On the tool's curated `keep` list: a finding by default, not only context."""


def tool_table(tool: str) -> dict[str, Any]:
    table: dict[str, Any] = load_table("linter_codes.json")["tools"][tool]
    return table


@cache
def classify(tool: str, code: str) -> CodeInfo:
    """The table entry for `code`: the longest matching code prefix, else the tool's default."""
    table = tool_table(tool)
    matches = [key for key in table["codes"] if code.startswith(key)]
    entry = table["codes"][max(matches, key=len)] if matches else table["default"]
    items = tuple(entry["items"])
    point = entry.get("point") or ITEMS_BY_ID[items[0]].point
    keep = table.get("keep", ["*"])
    return CodeInfo(
        items=items,
        point=point,
        severity=entry["severity"],
        concern=entry.get("concern"),
        kept="*" in keep or any(code.startswith(prefix) for prefix in keep),
    )


@cache
def concern_rules() -> dict[str, frozenset[str]]:
    """Concern -> the native rule ids that report the same problem."""
    raw: dict[str, list[str]] = load_table("linter_codes.json")["concerns"]
    return {concern: frozenset(rules) for concern, rules in raw.items()}


def relative_path(file: str, root: Path) -> str:
    """A tool's file name (absolute, './x.py' or 'x.py') as a POSIX path relative to root."""
    path = Path(file)
    if path.is_absolute():
        for base in (root, root.resolve()):
            try:
                return path.relative_to(base).as_posix()
            except ValueError:
                continue
        return path.as_posix()
    return PurePosixPath(path.as_posix()).as_posix().removeprefix("./")


class EvidenceFactory:
    """Builds one tool run's evidence; reads each reported file once for excerpts."""

    def __init__(self, tool: str, version: str, root: Path) -> None:
        self.tool = tool
        self.version = version
        self.root = root
        self._lines: dict[str, list[str]] = {}

    def _file_lines(self, relpath: str) -> list[str]:
        if relpath not in self._lines:
            try:
                text = (self.root / relpath).read_text(encoding="utf-8", errors="replace")
            except OSError:
                text = ""
            self._lines[relpath] = text.splitlines()
        return self._lines[relpath]

    def make(
        self,
        code: str,
        file: str | None,
        line: int | None,
        message: str,
        extra: dict[str, Any] | None = None,
    ) -> Evidence:
        info = classify(self.tool, code)
        relpath = relative_path(file, self.root) if file else None
        excerpt = ""
        if relpath and line:
            excerpt = numbered_excerpt(self._file_lines(relpath), line, line)
        data: dict[str, Any] = {
            "code": code,
            "items": list(info.items),
            "point": info.point,
            "severity": info.severity.value,
            "kept": info.kept,
        }
        if info.concern:
            data["concern"] = info.concern
        return Evidence(
            source=self.tool,
            source_version=self.version,
            kind="linter",
            message=message,
            file=relpath,
            line=line,
            excerpt=excerpt,
            data={**data, **(extra or {})},
        )
