"""bandit: security smells (unsafe torch.load B614, pickle, hard-coded passwords, ...)."""

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
from torchdoctor.agent.checks.linters.evidence import EvidenceFactory
from torchdoctor.agent.checks.linters.process import ToolOutput


class BanditAdapter(SubprocessLinter):
    name: ClassVar[str] = "bandit"
    executable: ClassVar[str] = "bandit"

    def command(self, executable: str, files: Sequence[str], scratch: Path) -> list[str]:
        return [executable, "--format", "json", "--quiet", "--", *files]

    def parse(self, output: ToolOutput, evidence: EvidenceFactory) -> Parsed:
        report = json_output(output.stdout)
        try:
            found = [
                evidence.make(
                    item["test_id"],
                    item["filename"],
                    int(item["line_number"]),
                    item["issue_text"],
                    {"confidence": item.get("issue_confidence", "").lower()},
                )
                for item in report["results"]
            ]
            notes = [
                f"bandit could not scan {e['filename']}: {e['reason']}" for e in report["errors"]
            ]
        except (KeyError, TypeError, ValueError) as err:
            raise ToolOutputError(f"unexpected report shape ({err!r})") from err
        return Parsed(found, notes)
