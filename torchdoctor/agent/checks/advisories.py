"""Known advisories for pinned packages (a data table), and whether a pin is stuck on them.

A pin is reported only when every version it allows is affected (`torch==2.5.1`,
`torch<2.6`, `torch~=2.4.0`): a range that also allows a fixed release (`torch>=2.0`) lets the
resolver pick the fix, so it is no finding. This works offline, unlike pip-audit.
"""

from __future__ import annotations

from functools import cache

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict

from torchdoctor.agent.checks.data import load_table
from torchdoctor.agent.checks.manifests import Pin
from torchdoctor.agent.models import Severity


class Advisory(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    aliases: tuple[str, ...] = ()
    package: str
    affected: str
    fixed: str
    severity: Severity
    summary: str
    url: str

    @property
    def label(self) -> str:
        return " / ".join((*self.aliases, self.id))


@cache
def advisories() -> tuple[Advisory, ...]:
    return tuple(Advisory.model_validate(a) for a in load_table("advisories.json")["advisories"])


def _release_grid(fixed: Version) -> list[Version]:
    """Versions to probe a specifier with: every x.y.z up to well past the fixed release."""
    majors = range(0, fixed.major + 3)
    return [Version(f"{a}.{b}.{c}") for a in majors for b in range(0, 40) for c in range(0, 10)]


def stuck_on(pin: Pin, advisory: Advisory) -> bool:
    """Whether every version `pin` allows is affected by `advisory` (and it allows some)."""
    if pin.name != advisory.package or not pin.specifier or pin.direct:
        return False
    affected = SpecifierSet(advisory.affected)
    exact = pin.exact_version
    try:
        if exact is not None:
            return Version(Version(exact).base_version) in affected
        allowed = SpecifierSet(pin.specifier)
    except (InvalidVersion, InvalidSpecifier):
        return False
    probes = [v for v in _release_grid(Version(advisory.fixed)) if v in allowed]
    return bool(probes) and all(v in affected for v in probes)


def advisories_for(pin: Pin) -> list[Advisory]:
    return [a for a in advisories() if stuck_on(pin, a)]
