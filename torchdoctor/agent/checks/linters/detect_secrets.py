"""detect-secrets: hard-coded credentials (API keys, tokens, private keys)."""

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


class DetectSecretsAdapter(SubprocessLinter):
    name: ClassVar[str] = "detect-secrets"
    executable: ClassVar[str] = "detect-secrets"
    ok_exit_codes: ClassVar[frozenset[int]] = frozenset({0})

    def command(self, executable: str, files: Sequence[str], scratch: Path) -> list[str]:
        # --no-verify: never send a found secret anywhere to check whether it is live.
        return [executable, "scan", "--no-verify", "--", *files]

    def parse(self, output: ToolOutput, evidence: EvidenceFactory) -> Parsed:
        report = json_output(output.stdout)
        try:
            found = [
                evidence.make(
                    secret["type"],
                    filename,
                    int(secret["line_number"]),
                    f"possible secret: {secret['type']}",
                    {"hashed_secret": secret.get("hashed_secret", "")},
                )
                for filename, secrets in report["results"].items()
                for secret in secrets
            ]
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ToolOutputError(f"unexpected report shape ({err!r})") from err
        return Parsed(found)
