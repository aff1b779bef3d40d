"""Which code the model sees: numbered windows around the evidence, merged and capped.

Whole repositories are never sent. Each location (a native finding, a piece of evidence) opens
a window of a few lines either side; overlapping windows merge; locations are taken in priority
order until the line cap is reached. A point with no located evidence gets each file's outline
(imports, classes, functions), so the model can still judge structure-level items. A request
that covers several points shows each line once (`merge_windows`), blank lines left out (the
line numbers show the gaps).
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Reader = Callable[[str], list[str] | None]
_LONGEST = 24
"""A construct longer than this (a whole loop, a class) is shown by its first lines."""


@dataclass(frozen=True)
class Location:
    file: str
    line: int
    end_line: int


@dataclass(frozen=True)
class Window:
    file: str
    start: int
    end: int
    lines: tuple[str, ...]
    """Only the shown lines (for an outline: the outline lines, numbered by `numbers`)."""
    numbers: tuple[int, ...]

    def render(self) -> str:
        pairs = zip(self.numbers, self.lines, strict=True)
        return "\n".join(f"{n}|{text.rstrip()}" for n, text in pairs if text.strip())


@dataclass
class Selection:
    windows: list[Window]
    omitted_locations: int
    outline: bool

    @property
    def line_count(self) -> int:
        return sum(len(w.lines) for w in self.windows)


def select_windows(
    locations: Sequence[Location],
    files: Sequence[str],
    read: Reader,
    context: int,
    max_lines: int,
) -> Selection:
    ranges: dict[str, list[tuple[int, int]]] = {}
    sources: dict[str, list[str]] = {}
    omitted = 0
    for loc in locations:
        if loc.file not in sources:
            text = read(loc.file)
            if text is None:
                omitted += 1
                continue
            sources[loc.file] = text
        total = len(sources[loc.file])
        if total == 0:
            continue
        start = max(1, min(loc.line, total) - context)
        end = min(total, max(loc.end_line, loc.line) + context, start + 2 * context + _LONGEST)
        candidate = {**ranges, loc.file: _merge([*ranges.get(loc.file, []), (start, end)])}
        if _count(candidate) > max_lines:
            omitted += 1
            continue
        ranges = candidate
    if not ranges and not omitted:
        return Selection(_outlines(files, read, max_lines), 0, outline=True)
    windows = [
        Window(file, a, b, tuple(sources[file][a - 1 : b]), tuple(range(a, b + 1)))
        for file in sorted(ranges)
        for a, b in ranges[file]
    ]
    return Selection(windows, omitted, outline=False)


def merge_windows(windows: Sequence[Window]) -> list[Window]:
    """One window per file holding every line any of `windows` shows, each line once."""
    shown: dict[str, dict[int, str]] = {}
    for window in windows:
        shown.setdefault(window.file, {}).update(zip(window.numbers, window.lines, strict=True))
    merged = []
    for file in sorted(shown):
        numbers = tuple(sorted(shown[file]))
        lines = tuple(shown[file][n] for n in numbers)
        merged.append(Window(file, numbers[0], numbers[-1], lines, numbers))
    return merged


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _count(ranges: dict[str, list[tuple[int, int]]]) -> int:
    return sum(b - a + 1 for spans in ranges.values() for a, b in spans)


def _outlines(files: Sequence[str], read: Reader, max_lines: int) -> list[Window]:
    windows: list[Window] = []
    budget = max_lines
    for file in files:
        lines = read(file)
        if not lines or budget <= 0:
            continue
        numbers = _outline_lines(lines)[:budget]
        budget -= len(numbers)
        windows.append(
            Window(
                file, numbers[0], numbers[-1], tuple(lines[n - 1] for n in numbers), tuple(numbers)
            )
        )
    return windows


def _outline_lines(lines: list[str]) -> list[int]:
    """Line numbers of imports and of class/function headers (the first lines if unparsable)."""
    try:
        tree = ast.parse("\n".join(lines))
    except (SyntaxError, ValueError, RecursionError):
        return list(range(1, min(len(lines), 40) + 1))
    wanted = {
        node.lineno
        for node in ast.walk(tree)
        if isinstance(
            node,
            ast.Import | ast.ImportFrom | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef,
        )
    }
    return sorted(wanted) or [1]
