"""TorchFix's per-file set-up done once per warm process rather than in every run it forks.

TorchFix (a flake8 plugin) builds its twelve libcst visitors for every file, and libcst's
batched traversal asks each visitor, and each metadata provider it resolves, for its
`visit_*`/`leave_*` methods with `inspect.getmembers`, every time: about 12 ms of a 130 ms run
on a training script, paid again in each forked run. One of the visitors also parses
TorchFix's YAML table of deprecated symbols each time (5 ms). A method's name is a property of
the visitor's class, and the table is a package file, so in a warm process (`warm_up`) both are
kept: `get_visitors` finds the names once per class and binds them to each new visitor, and the
table is parsed once, each visitor getting its own deep copy. Every run still builds fresh
visitors, so no state passes from one file to the next, and the methods found are the ones
libcst's own lookup finds (one with a `visit_`/`leave_` attribute of its own is looked up as
before).
"""

from __future__ import annotations

import copy
import functools
import importlib
from collections.abc import Callable, Mapping
from typing import Any

VISIT_PREFIXES = ("visit_", "leave_")
_method_names: dict[type, tuple[str, ...]] = {}


def prepare(sample: str) -> bool:
    """Keep libcst's visitor lookup and TorchFix's symbol table in this process, filled by one
    run of the plugin on `sample` here (not in a fork: what it keeps is then inherited by
    every run forked from this process); whether TorchFix ran (when it cannot be imported,
    nothing changes)."""
    try:
        batched: Any = importlib.import_module("libcst._batched_visitor")
        symbols: Any = importlib.import_module("torchfix.visitors.deprecated_symbols")
        plugin: Any = importlib.import_module("torchfix.torchfix")
    except ImportError:
        return False
    visitor_class = batched.BatchableCSTVisitor
    if not getattr(visitor_class.get_visitors, "_torchdoctor_kept", False):
        visitor_class.get_visitors = kept_lookup(visitor_class.get_visitors)
    yaml = getattr(symbols, "yaml", None)
    if yaml is not None and not isinstance(yaml, ParsedOnce):
        symbols.yaml = ParsedOnce(yaml)
    try:
        list(plugin.TorchChecker(None, sample.splitlines(keepends=True)).run())
    except Exception:  # a plugin that fails here fails (and is reported) in its own runs
        return False
    return True


def kept_lookup(
    lookup: Callable[[Any], Mapping[str, Callable[..., object]]],
) -> Callable[[Any], Mapping[str, Callable[..., object]]]:
    """`lookup` (libcst's `get_visitors`) run once per visitor class; later visitors of the
    class get the same names bound to themselves (`__wrapped__` is `lookup`)."""

    @functools.wraps(lookup)
    def get_visitors(visitor: Any) -> Mapping[str, Callable[..., object]]:
        own = getattr(visitor, "__dict__", {})
        if any(name.startswith(VISIT_PREFIXES) for name in own):
            return lookup(visitor)  # set on the instance: not a property of its class
        names = _method_names.get(type(visitor))
        if names is None:
            names = _method_names[type(visitor)] = tuple(lookup(visitor))
        return {name: getattr(visitor, name) for name in names}

    get_visitors._torchdoctor_kept = True  # type: ignore[attr-defined]
    return get_visitors


class ParsedOnce:
    """Stands in for the `yaml` module where TorchFix reads its symbol table: `load` parses each
    document once and hands out deep copies; anything else is the module's own."""

    def __init__(self, module: Any) -> None:
        self._module = module
        self._parsed: dict[tuple[bytes | str, Any], Any] = {}

    def load(self, data: bytes | str, loader: Any) -> Any:
        key = (data, loader)
        if key not in self._parsed:
            self._parsed[key] = self._module.load(data, loader)
        return copy.deepcopy(self._parsed[key])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)
