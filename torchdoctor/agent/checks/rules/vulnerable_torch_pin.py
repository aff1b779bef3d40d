"""vulnerable-torch-pin: a manifest pins torch to versions with a known vulnerability."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from packaging.version import Version

from torchdoctor.agent.checks.advisories import advisories_for
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule, numbered_excerpt
from torchdoctor.agent.checks.manifests import parse_manifests
from torchdoctor.agent.models import Severity


class VulnerableTorchPin(Rule):
    """Detects a dependency manifest (requirements*.txt, pyproject.toml, setup.cfg, conda
    environment) whose torch requirement allows only versions named by a known advisory, e.g.
    CVE-2025-32434 (GHSA-53q9-r3pm-6pq6) for every torch before 2.6.0.

    Why it matters: before 2.6.0, `torch.load(..., weights_only=True)` can still execute code
    from a crafted checkpoint, so the usual safe-loading advice does not protect a project
    that pins an older torch. Ranges that also allow a fixed release are not reported.

    Example:
        # requirements.txt
        torch==2.5.1

    Fix: raise the pin to a fixed release (`torch>=2.6.0`), then re-run the tests: 2.6 also
    changed `torch.load`'s default to `weights_only=True`.
    """

    id = "vulnerable-torch-pin"
    point = 11
    severity = Severity.HIGH
    severity_note = "the worst severity among the advisories that the pin allows"
    title = "torch is pinned to a version with a known vulnerability"
    items: ClassVar[tuple[str, ...]] = ("11.1",)
    reads_manifests = True

    def applies(self, ctx: ModuleContext) -> bool:
        return False  # a project-level rule: applicability comes from the manifests

    @classmethod
    def check_manifests(cls, manifests: Mapping[str, str]) -> list[RawFinding]:
        findings: list[RawFinding] = []
        for pin in parse_manifests(manifests):
            found = advisories_for(pin)
            if not found:
                continue
            worst = max((a.severity for a in found), key=lambda s: s.rank)
            fixed = max(found, key=lambda a: Version(a.fixed)).fixed
            labels = "; ".join(f"{a.label}: {a.summary}" for a in found)
            findings.append(
                RawFinding(
                    rule=cls.id,
                    file=pin.file,
                    line=pin.line,
                    end_line=pin.line,
                    code=pin.raw,
                    message=(
                        f"torch{pin.specifier} allows only vulnerable versions ({labels}); "
                        f"the first fixed release is {fixed}"
                    ),
                    severity=worst,
                    excerpt=numbered_excerpt(manifests[pin.file].splitlines(), pin.line, pin.line),
                    data={
                        "advisories": [a.id for a in found],
                        "aliases": [alias for a in found for alias in a.aliases],
                        "specifier": pin.specifier,
                        "fixed": fixed,
                    },
                )
            )
        return findings
