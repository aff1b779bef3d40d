"""pip-audit: known vulnerabilities of the exact versions a project's manifests pin.

pip-audit needs the network. Offline it may exit 0, print "No known vulnerabilities found" and
skip every package, or crash on the connection: both mean *not checked*, never *clean*. Every
skipped or unpinned package is reported as unknown, and the note says "not checked: offline"
when nothing could be checked. Only exact pins are audited (`--no-deps`, no pip resolution):
a range names no single version to look up.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from torchdoctor.agent.checks.linters.base import (
    LinterResult,
    LinterStatus,
    Parsed,
    SubprocessLinter,
    ToolOutputError,
    json_output,
)
from torchdoctor.agent.checks.linters.evidence import EvidenceFactory
from torchdoctor.agent.checks.linters.process import ToolMissing, ToolOutput, ToolTimeout, run_tool
from torchdoctor.agent.checks.manifests import Pin, find_manifests, parse_manifests
from torchdoctor.agent.models import Evidence

NETWORK_ERRORS = (
    "ConnectionError",
    "ProxyError",
    "Max retries exceeded",
    "Could not connect",
    "NameResolutionError",
    "Temporary failure in name resolution",
)
OFFLINE = "not checked: offline"


class PipAuditAdapter(SubprocessLinter):
    name: ClassVar[str] = "pip-audit"
    executable: ClassVar[str] = "pip-audit"

    def __init__(
        self,
        timeout_s: float = 300.0,
        offline: bool = False,
        manifests: Mapping[str, str] | None = None,
    ) -> None:
        """`manifests` (relative path -> text) as the engine got them; None: find them."""
        super().__init__(timeout_s)
        self.offline = offline
        self.manifests = manifests
        self._pins: dict[str, Pin] = {}

    def command(self, executable: str, files: Sequence[str], scratch: Path) -> list[str]:
        """For pip-audit, `files` are the `name==version` requirements to audit."""
        requirements = scratch / "requirements.txt"
        requirements.write_text("".join(f"{req}\n" for req in files), encoding="utf-8")
        return [
            executable,
            "--no-deps",
            "--disable-pip",
            "--requirement",
            str(requirements),
            "--format",
            "json",
            "--progress-spinner",
            "off",
            "--aliases",
            "on",
            "--desc",
            "off",
            "--timeout",
            "15",
            "--cache-dir",
            str(scratch / "cache"),
        ]

    def run(self, root: Path, files: list[str]) -> LinterResult:
        """Audits the exact pins of the manifests; `files` (Python sources) is not used."""
        started = time.perf_counter()
        pins = parse_manifests(find_manifests(root) if self.manifests is None else self.manifests)
        exact = {p.name: p for p in pins if p.exact_version and not p.direct}
        unpinned = sorted(
            {f"{p.name} ({p.file}:{p.line}): no exact version" for p in pins if p.name not in exact}
        )
        if self.executable_path() is None:
            return self.result("not-installed", started, notes=["pip-audit is not installed"])
        if not exact:
            note = (
                "no exact pins in the dependency manifests" if pins else "no dependency manifests"
            )
            return self.result("not-run", started, notes=[note], unknown=unpinned)
        every = sorted(f"{name}=={pin.exact_version}" for name, pin in exact.items())
        if self.offline:
            return self.result("not-run", started, notes=[OFFLINE], unknown=every + unpinned)
        self._pins = exact
        result = self._audit(root, every, started)
        return result.model_copy(update={"unknown": result.unknown + unpinned})

    def _audit(self, root: Path, requirements: list[str], started: float) -> LinterResult:
        with tempfile.TemporaryDirectory(prefix="td-pip-audit-") as scratch:
            path = self.executable_path() or self.executable
            argv = self.command(path, requirements, Path(scratch))
            try:
                output = run_tool(argv, root, self.timeout_s)
            except ToolMissing as err:
                return self.result("not-installed", started, notes=[f"pip-audit: {err}"])
            except ToolTimeout as err:
                note = f"pip-audit {err}; {OFFLINE} or slow network"
                return self.result("timeout", started, notes=[note], unknown=requirements)
        if any(marker in output.stderr for marker in NETWORK_ERRORS):
            note = f"{OFFLINE} (the vulnerability service could not be reached)"
            return self.result("failed", started, notes=[note], unknown=requirements)
        if output.returncode not in self.ok_exit_codes or output.crashed:
            note = f"pip-audit exited with status {output.returncode}: {output.stderr_tail()}"
            return self.result("failed", started, notes=[note], unknown=requirements)
        try:
            parsed = self.parse(output, EvidenceFactory(self.name, self.version(), root))
        except ToolOutputError as err:
            note = f"pip-audit output could not be read ({err}); nothing it reported is used"
            return self.result("failed", started, notes=[note], unknown=requirements)
        status: LinterStatus = "partial" if parsed.unknown else "ok"
        if parsed.unknown and len(parsed.unknown) == len(requirements):
            status = "failed"
        return self.result(
            status, started, evidence=parsed.evidence, notes=parsed.notes, unknown=parsed.unknown
        )

    def parse(self, output: ToolOutput, evidence: EvidenceFactory) -> Parsed:
        report = json_output(output.stdout)
        try:
            dependencies: list[dict[str, Any]] = report["dependencies"]
            skipped = [d for d in dependencies if "skip_reason" in d]
            found = [
                self._vulnerability(evidence, dep, vuln)
                for dep in dependencies
                if "skip_reason" not in dep
                for vuln in dep["vulns"]
            ]
        except (KeyError, TypeError) as err:
            raise ToolOutputError(f"unexpected report shape ({err!r})") from err
        unknown = [f"{d['name']}: {d['skip_reason']}" for d in skipped]
        notes = []
        if skipped and len(skipped) == len(dependencies):
            notes.append(f"{OFFLINE}: pip-audit skipped all {len(skipped)} packages")
        elif skipped:
            notes.append(f"not checked: {len(skipped)} of {len(dependencies)} packages skipped")
        return Parsed(found, notes, unknown)

    def _vulnerability(
        self, evidence: EvidenceFactory, dep: dict[str, Any], vuln: dict[str, Any]
    ) -> Evidence:
        pin = self._pins.get(dep["name"])
        aliases = [a for a in vuln.get("aliases", []) if a != vuln["id"]]
        fixed = ", ".join(vuln.get("fix_versions", [])) or "no fixed release yet"
        names = " / ".join([vuln["id"], *aliases])
        message = (
            f"{dep['name']}=={dep['version']} has a known vulnerability ({names}); fixed in {fixed}"
        )
        return evidence.make(
            vuln["id"],
            pin.file if pin else None,
            pin.line if pin else None,
            message,
            {
                "package": dep["name"],
                "version": dep["version"],
                "aliases": aliases,
                "fix_versions": vuln.get("fix_versions", []),
            },
        )
