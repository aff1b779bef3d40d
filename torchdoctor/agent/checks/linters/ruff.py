"""ruff, limited to the codes the checklist cares about (the table's ruff codes)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from torchdoctor.agent.checks.linters.base import (
    Parsed,
    SubprocessLinter,
    ToolOutputError,
    json_output,
)
from torchdoctor.agent.checks.linters.evidence import EvidenceFactory, tool_table
from torchdoctor.agent.checks.linters.process import ToolOutput

SYNTAX_CODE = "invalid-syntax"


class RuffAdapter(SubprocessLinter):
    name: ClassVar[str] = "ruff"
    executable: ClassVar[str] = "ruff"
    ok_exit_codes: ClassVar[frozenset[int]] = frozenset({0})

    def command(self, executable: str, files: Sequence[str], scratch: Path) -> list[str]:
        select = ",".join(code for code in tool_table(self.name)["codes"] if code != SYNTAX_CODE)
        return [
            executable,
            "check",
            "--isolated",
            "--no-cache",
            "--exit-zero",
            "--output-format",
            "json",
            "--select",
            select,
            "--",
            *files,
        ]

    def parse(self, output: ToolOutput, evidence: EvidenceFactory) -> Parsed:
        report = json_output(output.stdout)
        if not isinstance(report, list):
            raise ToolOutputError("expected a JSON list of diagnostics")
        found = []
        for item in report:
            try:
                code = item.get("code") or SYNTAX_CODE
                line = int(item["location"]["row"])
                found.append(evidence.make(code, item["filename"], line, item["message"]))
            except (KeyError, TypeError, ValueError, AttributeError) as err:
                raise ToolOutputError(f"unexpected diagnostic {str(item)[:120]}") from err
        return Parsed(found)
