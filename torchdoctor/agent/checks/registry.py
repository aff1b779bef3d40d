"""Discovers the native rules: every module of `torchdoctor.agent.checks.rules` holds one."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from functools import cache

from torchdoctor.agent.checks import rules as rules_package
from torchdoctor.agent.checks.base import Rule


class RuleRegistryError(RuntimeError):
    pass


@cache
def all_rules() -> tuple[type[Rule], ...]:
    found: list[type[Rule]] = []
    for info in sorted(pkgutil.iter_modules(rules_package.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{rules_package.__name__}.{info.name}")
        defined = [
            obj
            for _, obj in inspect.getmembers(module, inspect.isclass)
            if issubclass(obj, Rule) and obj is not Rule and obj.__module__ == module.__name__
        ]
        if len(defined) != 1:
            raise RuleRegistryError(f"{module.__name__} must define exactly one rule")
        found.append(defined[0])
    ids = [r.id for r in found]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise RuleRegistryError(f"duplicate rule ids: {sorted(duplicates)}")
    return tuple(sorted(found, key=lambda r: (r.point, r.id)))


def rules_by_id() -> dict[str, type[Rule]]:
    return {r.id: r for r in all_rules()}


def names_rule(rule_id: str, point: int | None, names: frozenset[str]) -> bool:
    """Whether a select/ignore list names a rule by id, by its point's number, or by `all`."""
    return rule_id in names or "all" in names or (point is not None and str(point) in names)


def enabled_rules(
    select: frozenset[str] = frozenset(), ignore: frozenset[str] = frozenset()
) -> tuple[type[Rule], ...]:
    """Default-tier rules plus opt-in rules named in `select`, minus `ignore`.

    `select` also accepts 'all' (every rule) and point numbers as strings ('3').
    """
    chosen = []
    for rule in all_rules():
        if names_rule(rule.id, rule.point, ignore):
            continue
        if rule.tier == "default" or names_rule(rule.id, rule.point, select):
            chosen.append(rule)
    return tuple(chosen)


def rule_doc(rule: type[Rule]) -> str:
    return inspect.cleandoc(rule.__doc__ or "")
