"""The seam every peer-linter adapter follows, and the results they hand back (pydantic).

Peer linters are evidence, not authorities: an adapter runs one tool as a subprocess, maps its
codes onto checklist items, and says plainly when it could not check something (tool missing,
crashed, timed out, offline). A tool's failure is a coverage note, never an exception.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from torchdoctor.agent.checklist import ITEMS
from torchdoctor.agent.checks.linters.evidence import EvidenceFactory
from torchdoctor.agent.checks.linters.process import (
    ToolMissing,
    ToolOutput,
    ToolTimeout,
    resolve_executable,
    run_tool,
)
from torchdoctor.agent.models import Evidence

LinterStatus = Literal["ok", "partial", "not-installed", "failed", "timeout", "not-run"]
VERSION_TIMEOUT_S = 30.0
ARGV_BUDGET = 200_000  # characters of file names per command line, well below the OS limit
_VERSION = re.compile(r"\d+(?:\.\d+)+")


class LinterResult(BaseModel):
    """One tool's run: its evidence, and what it could not check (`unknown`) and why."""

    model_config = ConfigDict(extra="forbid")

    tool: str
    version: str = ""
    status: LinterStatus
    evidence: list[Evidence] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    unknown: list[str] = Field(default_factory=list)
    seconds: float = 0.0
    cached: bool = Field(False, description="reused from an earlier run on the same content")


class LinterAdapter(Protocol):
    @property
    def name(self) -> str: ...

    def available(self) -> bool: ...

    def version(self) -> str: ...

    def run(self, root: Path, files: list[str]) -> LinterResult: ...


class ToolOutputError(Exception):
    """The tool's output is not what its documented format promises."""


def json_output(text: str) -> Any:
    """The tool's stdout as JSON, or `ToolOutputError` quoting what came instead."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ToolOutputError(f"expected JSON, got {text.strip()[:120]!r}") from err


@dataclass
class Parsed:
    evidence: list[Evidence]
    notes: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def tool_items(tool: str) -> list[str]:
    """Checklist items that name `tool:<tool>` among their checks."""
    return [item.id for item in ITEMS if f"tool:{tool}" in item.checks]


_versions: dict[tuple[type, str | None, int], str] = {}
"""Each tool's version by adapter, executable and the executable's modification time: every
audit builds its adapters afresh, and reading a version costs a metadata search or a
`--version` run, so it is read once in a process (a fork server's workers inherit it) and again
only when the executable is replaced."""


def _modified(path: str | None) -> int:
    try:
        return os.stat(path).st_mtime_ns if path else 0
    except OSError:
        return 0


class SubprocessLinter(ABC):
    """An adapter for a tool with a machine-readable report: build argv, parse stdout."""

    name: ClassVar[str]
    executable: ClassVar[str]
    ok_exit_codes: ClassVar[frozenset[int]] = frozenset({0, 1})
    argv_budget: int = ARGV_BUDGET

    def __init__(self, timeout_s: float = 300.0) -> None:
        self.timeout_s = timeout_s
        self._version: str | None = None

    def executable_path(self) -> str | None:
        return resolve_executable(self.executable)

    def available(self) -> bool:
        return self.executable_path() is not None

    def version(self) -> str:
        """The tool's version as it reports it ('' when it cannot say): read once per process
        for each executable (`_versions`)."""
        if self._version is None:
            path = self.executable_path()
            key = (type(self), path, _modified(path))
            found = _versions.get(key)
            if found is None:
                found = _versions[key] = self._own_version() or self._read_version()
            self._version = found
        return self._version

    def _own_version(self) -> str:
        """The version from this environment's metadata when the tool is this environment's
        own (its script sits next to our interpreter): no `--version` subprocess to wait for."""
        path = self.executable_path()
        if path is None or os.path.dirname(path) != os.path.dirname(sys.executable):
            return ""
        try:
            return metadata.version(self.name)
        except metadata.PackageNotFoundError:
            return ""

    def _read_version(self) -> str:
        output = self._version_output()
        match = _VERSION.search(output)
        return match.group(0) if match else ""

    def _version_output(self) -> str:
        path = self.executable_path()
        if path is None:
            return ""
        try:
            out = run_tool([path, "--version"], Path.cwd(), VERSION_TIMEOUT_S)
        except (ToolMissing, ToolTimeout):
            return ""
        return out.stdout + out.stderr if out.returncode == 0 else ""

    @abstractmethod
    def command(self, executable: str, files: Sequence[str], scratch: Path) -> list[str]:
        """The argv that checks `files` (relative to the working directory, the project root)."""

    @abstractmethod
    def parse(self, output: ToolOutput, evidence: EvidenceFactory) -> Parsed:
        """Evidence from the tool's stdout; raises `ToolOutputError` on unreadable output."""

    def result(self, status: LinterStatus, started: float, **fields: object) -> LinterResult:
        return LinterResult.model_validate(
            {
                "tool": self.name,
                "version": self.version() if status != "not-installed" else "",
                "status": status,
                "seconds": time.perf_counter() - started,
                **fields,
            }
        )

    def run(self, root: Path, files: list[str]) -> LinterResult:
        started = time.perf_counter()
        path = self.executable_path()
        if path is None:
            return self.result("not-installed", started, notes=[f"{self.name} is not installed"])
        if not files:
            return self.result("not-run", started, notes=["no files to check"])
        factory = EvidenceFactory(self.name, self.version(), root)
        collected = Parsed([])
        for batch in command_line_batches(files, self.argv_budget):
            remaining = self.timeout_s - (time.perf_counter() - started)
            failure = self._run_batch(path, root, batch, remaining, factory, collected)
            if failure is not None:
                stopped, note = failure
                return self.result(stopped, started, evidence=collected.evidence, notes=[note])
        status: LinterStatus = "partial" if collected.unknown else "ok"
        return self.result(
            status,
            started,
            evidence=collected.evidence,
            notes=collected.notes,
            unknown=collected.unknown,
        )

    def _run_batch(
        self,
        executable: str,
        root: Path,
        files: list[str],
        timeout_s: float,
        factory: EvidenceFactory,
        into: Parsed,
    ) -> tuple[LinterStatus, str] | None:
        """Run one command line's worth of files into `into`; (status, note) if it failed."""
        if timeout_s <= 0:
            return "timeout", f"{self.name} stopped after the {self.timeout_s:g}s limit"
        with tempfile.TemporaryDirectory(prefix=f"td-{self.name}-") as scratch:
            try:
                output = run_tool(self.command(executable, files, Path(scratch)), root, timeout_s)
            except ToolMissing as err:
                return "not-installed", f"{self.name}: {err}"
            except ToolTimeout:
                return "timeout", f"{self.name} stopped after the {self.timeout_s:g}s limit"
        if output.returncode not in self.ok_exit_codes or output.crashed:
            return (
                "failed",
                f"{self.name} exited with status {output.returncode}: {output.stderr_tail()}",
            )
        try:
            parsed = self.parse(output, factory)
        except ToolOutputError as err:
            return "failed", f"{self.name} output could not be read ({err}); its report is not used"
        into.evidence.extend(parsed.evidence)
        into.notes.extend(parsed.notes)
        into.unknown.extend(parsed.unknown)
        return None


def command_line_batches(files: list[str], budget: int = ARGV_BUDGET) -> list[list[str]]:
    """`files` split so no command line exceeds `budget` characters of file names."""
    batches: list[list[str]] = [[]]
    size = 0
    for name in files:
        if batches[-1] and size + len(name) + 1 > budget:
            batches.append([])
            size = 0
        batches[-1].append(name)
        size += len(name) + 1
    return batches
