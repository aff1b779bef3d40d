"""mypy (opt-in: slower): type errors in annotated code, under mypy's default settings.

An empty config file keeps the audited project's mypy plugins and options out of the run,
so a plugin that is not installed here cannot crash it; the cache lives in a scratch folder.
"""

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


class MypyAdapter(SubprocessLinter):
    name: ClassVar[str] = "mypy"
    executable: ClassVar[str] = "mypy"

    def command(self, executable: str, files: Sequence[str], scratch: Path) -> list[str]:
        config = scratch / "mypy.ini"
        config.write_text("[mypy]\n", encoding="utf-8")
        return [
            executable,
            "--config-file",
            str(config),
            "--cache-dir",
            str(scratch / "cache"),
            "--output",
            "json",
            "--no-error-summary",
            "--ignore-missing-imports",
            "--follow-imports",
            "silent",
            *files,
        ]

    def parse(self, output: ToolOutput, evidence: EvidenceFactory) -> Parsed:
        found = []
        for line in output.stdout.splitlines():
            if not line.strip():
                continue
            item = json_output(line)
            try:
                if item["severity"] != "error":
                    continue
                code = item.get("code") or "error"
                found.append(evidence.make(code, item["file"], int(item["line"]), item["message"]))
            except (KeyError, TypeError, ValueError) as err:
                raise ToolOutputError(f"unexpected diagnostic {line[:120]!r}") from err
        return Parsed(found)
