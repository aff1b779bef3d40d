"""flake8's per-run set-up done once per warm process, and its bundled checkers run only where
the run selects their codes.

A forked flake8 run (`warm`) starts by finding its plugins: it reads the entry points of every
distribution installed (~170 `entry_points.txt` files here, ~5 ms of a run), although what it
finds is fixed for the process's life (the plugins are imported in it already). The warm
process keeps that list (`find_plugins` still adds the configuration's local plugins and checks
the required ones on each run).

TorchFix runs under `--select=TOR...`, yet flake8 runs every checker it has on each file and
only then drops what is not selected: pyflakes, pycodestyle and mccabe cost 10-18 ms of a
50-150 ms run on a training script, for nothing the report keeps. A checker bundled with flake8
is therefore left out of a run when no code it reports can be selected (`--select` given and
none of its code families matches it). A third-party checker always runs: its codes are not
known ahead. What flake8 prints is unchanged: the selected codes only ever came from the
checkers that still run.
"""

from __future__ import annotations

import argparse
import functools
import importlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

BUNDLED_FAMILIES: dict[tuple[str, str], tuple[str, ...]] = {
    ("pyflakes", "F"): ("F",),
    ("pycodestyle", "E"): ("E", "W"),  # the logical-line checks report W6xx too
    ("pycodestyle", "W"): ("E", "W"),
    ("mccabe", "C90"): ("C90",),
}
"""(package, entry point) of flake8's own checkers -> the prefixes of every code each reports."""


def prepare() -> bool:
    """Keep flake8's installed plugins found once and skip its unselected bundled checkers in
    the runs forked from this process; whether flake8 could be set up (nothing changes when it
    cannot be imported)."""
    try:
        finder: Any = importlib.import_module("flake8.plugins.finder")
        application: Any = importlib.import_module("flake8.main.application")
    except ImportError:
        return False
    if not getattr(finder._find_importlib_plugins, "_torchdoctor_kept", False):
        finder._find_importlib_plugins = found_once(finder._find_importlib_plugins)
    list(finder._find_importlib_plugins())  # found here: every fork inherits the list
    app = application.Application
    if not getattr(app.make_file_checker_manager, "_torchdoctor_selected", False):
        app.make_file_checker_manager = selected_checkers_only(app.make_file_checker_manager)
    return True


def found_once(find: Callable[[], Iterable[Any]]) -> Callable[[], Iterator[Any]]:
    """`find` (flake8's walk of the installed distributions) run once; later calls replay
    what it yielded (`__wrapped__` is `find`)."""

    @functools.wraps(find)
    def kept() -> Iterator[Any]:
        return iter(_installed(find))

    kept._torchdoctor_kept = True  # type: ignore[attr-defined]
    return kept


@functools.cache
def _installed(find: Callable[[], Iterable[Any]]) -> tuple[Any, ...]:
    return tuple(find())


def selected_checkers_only(make: Callable[[Any, Sequence[str]], None]) -> Callable[..., None]:
    """`Application.make_file_checker_manager` handed only the checkers whose codes the run may
    report (`__wrapped__` is `make`)."""

    @functools.wraps(make)
    def make_file_checker_manager(app: Any, argv: Sequence[str]) -> None:
        if app.plugins is not None and app.options is not None:
            checkers = app.plugins.checkers
            app.plugins = app.plugins._replace(
                checkers=checkers._replace(
                    **{
                        kind: [p for p in getattr(checkers, kind) if may_report(p, app.options)]
                        for kind in ("tree", "logical_line", "physical_line")
                    }
                )
            )
        make(app, argv)

    make_file_checker_manager._torchdoctor_selected = True  # type: ignore[attr-defined]
    return make_file_checker_manager


def may_report(loaded: Any, options: argparse.Namespace) -> bool:
    """Whether the loaded checker `loaded` may report a code that `options` select: always,
    unless it is one of flake8's bundled checkers and `--select` names none of its codes."""
    families = BUNDLED_FAMILIES.get((loaded.plugin.package, loaded.entry_name))
    select = getattr(options, "select", None)
    if families is None or select is None:
        return True  # unknown codes, or flake8's default selection (everything)
    prefixes = [*select, *(getattr(options, "extend_select", None) or [])]
    return any(
        prefix.startswith(family) or family.startswith(prefix)
        for prefix in prefixes
        for family in families
    )
