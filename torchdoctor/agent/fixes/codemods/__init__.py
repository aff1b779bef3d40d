"""Codemods by rule id: every module of this package except the shared helpers (`base`,
`common`, `attention_products`) holds one."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from functools import cache

from torchdoctor.agent.fixes.codemods.base import Codemod
from torchdoctor.agent.fixes.models import RunSignals
from torchdoctor.agent.models import Finding

_INFRASTRUCTURE = {"base", "common", "attention_products", "step_graph"}


class CodemodRegistryError(RuntimeError):
    pass


@cache
def all_codemods() -> dict[str, Codemod]:
    """rule id -> its codemod instance."""
    found: dict[str, Codemod] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name in _INFRASTRUCTURE:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        defined = [
            obj
            for _, obj in inspect.getmembers(module, inspect.isclass)
            if issubclass(obj, Codemod) and obj is not Codemod and obj.__module__ == module.__name__
        ]
        if len(defined) != 1:
            raise CodemodRegistryError(f"{module.__name__} must define exactly one codemod")
        codemod = defined[0]()
        if codemod.rule in found:
            raise CodemodRegistryError(f"two codemods for rule {codemod.rule}")
        found[codemod.rule] = codemod
    return found


def fixable_rules() -> frozenset[str]:
    """The rules torchdoctor can fix: those with a codemod (the one source of `fixable`)."""
    return frozenset(all_codemods())


def codemod_for(rule: str) -> Codemod | None:
    return all_codemods().get(rule)


BOTTLENECK_SHARE = 0.10
"""A share of the baseline's step time that makes a fix's bottleneck the one to relieve first:
as much as a single fix typically gains (bf16 +11.5%, channels_last +12.6% on the ResNet
benchmark on an H200), where a fix without a measurement may gain nothing."""


def fix_order(
    finding: Finding, measured: RunSignals | None = None
) -> tuple[int, bool, int, bool, str]:
    """The order fixes are verified, combined and written in: phase order; within a phase,
    first the fixes whose bottleneck the baseline run measured as large (`measured`: its
    signals; a loader the step waits on 78% of the time outranks a severity the static rule
    guessed), then the most severe, and the fixes whose runs compile last. A compiled run costs
    as much as several eager ones (Inductor's compile: 25 s a run for the ResNet benchmark on an
    H200), so a fix stage cut by its deadline loses the costliest verification, not the cheap
    ones behind it."""
    codemod = codemod_for(finding.rule)
    compiles = codemod is not None and codemod.extra_host_memory_mb > 0
    relieved = codemod.relieves if codemod else None
    share = getattr(measured, relieved) if measured is not None and relieved else None
    bottleneck = share is not None and share >= BOTTLENECK_SHARE
    return (finding.phase, not bottleneck, -finding.severity.rank, compiles, finding.id)
