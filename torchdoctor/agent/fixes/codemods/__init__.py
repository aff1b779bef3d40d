"""Codemods by rule id: every module of this package except `base` and `common` holds one."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from functools import cache

from torchdoctor.agent.fixes.codemods.base import Codemod
from torchdoctor.agent.models import Finding

_INFRASTRUCTURE = {"base", "common"}


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


def fix_order(finding: Finding) -> tuple[int, int, bool, str]:
    """The order fixes are verified, combined and written in: phase order, most severe first,
    and within that the fixes whose runs compile last. A compiled run costs as much as several
    eager ones (Inductor's compile: 25 s a run for the ResNet benchmark on an H200), so a fix
    stage cut by its deadline loses the costliest verification, not the cheap ones behind it."""
    codemod = codemod_for(finding.rule)
    compiles = codemod is not None and codemod.extra_host_memory_mb > 0
    return (finding.phase, -finding.severity.rank, compiles, finding.id)
