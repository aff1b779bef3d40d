"""unpinned-dependencies: a manifest requirement allows any version at all."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule, numbered_excerpt
from torchdoctor.agent.checks.manifests import parse_manifests
from torchdoctor.agent.models import Severity


class UnpinnedDependencies(Rule):
    """Detects a requirement with no version constraint (`numpy`, `- pytorch`) in a
    dependency manifest, unless a lock file or another manifest pins it exactly. Opt-in:
    libraries often leave constraints loose on purpose.

    Why it matters: every install may resolve a different release, so a training run cannot
    be reproduced, a breaking or compromised release is picked up silently, and neither
    pip-audit nor the advisory table can say which version is in use.

    Example:
        # requirements.txt
        torch
        numpy

    Fix: pin exact versions for applications (`torch==2.8.0`, ideally a lock file with hashes)
    and at least a tested range for libraries (`numpy>=1.26,<3`).
    """

    id = "unpinned-dependencies"
    point = 11
    severity = Severity.LOW
    title = "Dependency without any version constraint"
    items: ClassVar[tuple[str, ...]] = ("11.1",)
    tier = "opt-in"
    reads_manifests = True

    def applies(self, ctx: ModuleContext) -> bool:
        return False  # a project-level rule: applicability comes from the manifests

    @classmethod
    def check_manifests(cls, manifests: Mapping[str, str]) -> list[RawFinding]:
        pins = parse_manifests(manifests)
        locked = {pin.name for pin in pins if pin.exact_version}  # e.g. by uv.lock
        return [
            RawFinding(
                rule=cls.id,
                file=pin.file,
                line=pin.line,
                end_line=pin.line,
                code=pin.raw,
                message=f"'{pin.name}' has no version constraint: every install may differ",
                severity=cls.severity,
                excerpt=numbered_excerpt(manifests[pin.file].splitlines(), pin.line, pin.line),
                data={"package": pin.name, "section": pin.section},
            )
            for pin in pins
            if not pin.specifier and not pin.direct and pin.name not in locked
        ]
