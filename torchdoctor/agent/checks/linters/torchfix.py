"""TorchFix (PyTorch deprecations, unsafe torch.load, ...) through its flake8 plugin.

TorchFix has no JSON output, so it runs under flake8 with a `::`-separated format that this
adapter parses. `--isolated` keeps the audited project's flake8 config from changing the run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from torchdoctor.agent.checks.linters.base import Parsed, SubprocessLinter, ToolOutputError
from torchdoctor.agent.checks.linters.evidence import EvidenceFactory, tool_table
from torchdoctor.agent.checks.linters.process import ToolOutput
from torchdoctor.agent.cpus import usable_cpus

FORMAT = "%(path)s::%(row)d::%(col)d::%(code)s::%(text)s"
_PLUGIN_VERSION = re.compile(r"TorchFix:\s*(\d+(?:\.\d+)+)")


class TorchFixAdapter(SubprocessLinter):
    name: ClassVar[str] = "torchfix"
    executable: ClassVar[str] = "flake8"

    def available(self) -> bool:
        return self.executable_path() is not None and bool(self.version())

    def _read_version(self) -> str:
        """TorchFix's own version from `flake8 --version` ('' when the plugin is absent)."""
        match = _PLUGIN_VERSION.search(self._version_output())
        return match.group(1) if match else ""

    def command(self, executable: str, files: Sequence[str], scratch: Path) -> list[str]:
        select = ",".join(tool_table(self.name)["select"])
        jobs = str(usable_cpus())
        return [
            executable,
            "--isolated",
            f"--select={select}",
            f"--format={FORMAT}",
            "-j",
            jobs,
            "--",
            *files,
        ]

    def parse(self, output: ToolOutput, evidence: EvidenceFactory) -> Parsed:
        if not self.version():
            raise ToolOutputError("flake8 has no TorchFix plugin")
        found, notes = [], []
        for line in output.stdout.splitlines():
            if not line.strip():
                continue
            parts = line.split("::", 4)
            if len(parts) != 5 or not parts[1].isdigit():
                raise ToolOutputError(f"unexpected line {line[:120]!r}")
            path, row, _col, code, text = parts
            if code.startswith("TOR"):
                found.append(evidence.make(code, path, int(row), text))
            else:
                notes.append(f"flake8 {code} in {path}:{row}: {text}")
        return Parsed(found, notes)
