"""Jupyter notebooks as auditable Python: code cells concatenated, mapped back to cells.

Every line of the concatenated text comes from one line of one code cell, so a finding's line
maps back to (cell, line in cell). IPython syntax that is not Python (line magics `%...`,
shell escapes `!...`, help `obj?`, cell magics `%%...`) becomes an empty comment (`pass` where
indented) of the same line count: the rest of the cell is still audited and the map stays
exact. A cell that is not Python even so (a template left to fill in, `____`) is blanked the
same way and named in `unparsed`: Jupyter compiles each cell on its own, so one broken cell
stops only itself. Cells are numbered as Jupyter shows them to the eye: the n-th cell of the
notebook, markdown cells included.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

_SKIPPED = "#"


class NotebookError(ValueError):
    """The file is not a readable notebook (invalid JSON or not nbformat)."""


class CellSpan(BaseModel):
    """Lines `start..end` (1-based, inclusive) of the concatenated text are cell `cell`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cell: int
    start: int
    end: int


class NotebookSource(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str
    cells: tuple[CellSpan, ...]
    unparsed: tuple[tuple[int, str], ...] = ()
    """(cell, why) for each code cell left out because it does not parse."""


def _cell_lines(source: object) -> list[str]:
    if isinstance(source, list):
        text = "".join(str(part) for part in source)
    elif isinstance(source, str):
        text = source
    else:
        raise NotebookError("a code cell's source is neither text nor a list of lines")
    return text.splitlines()


def _python_line(line: str) -> str:
    stripped = line.lstrip()
    if stripped.startswith(("%", "!")) or (stripped.endswith("?") and "#" not in stripped):
        # Inside a block, a no-op at the same indentation: a branch holding only magics
        # (`if logger == "tb":` / `%load_ext tensorboard`) must still parse.
        indent = line[: len(line) - len(stripped)]
        return f"{indent}pass" if indent else _SKIPPED
    return line


def notebook_source(text: str) -> NotebookSource:
    """The notebook's code cells as one Python text, with the cell map. Raises NotebookError."""
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise NotebookError(f"invalid notebook JSON: {err}") from err
    cells = document.get("cells") if isinstance(document, dict) else None
    if not isinstance(cells, list):
        raise NotebookError("not a Jupyter notebook (no list of cells)")
    lines: list[str] = []
    spans: list[CellSpan] = []
    unparsed: list[tuple[int, str]] = []
    for number, cell in enumerate(cells, start=1):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        body = _cell_lines(cell.get("source", ""))
        if body and body[0].lstrip().startswith("%%"):
            body = [_SKIPPED] * len(body)  # a cell magic: the whole cell is not Python
        else:
            body = [_python_line(line) for line in body]
            why = _parse_error("\n".join(body))
            if why is not None:
                unparsed.append((number, why))
                body = [_SKIPPED] * len(body)
        if not body:
            continue
        spans.append(CellSpan(cell=number, start=len(lines) + 1, end=len(lines) + len(body)))
        lines.extend(body)
    text = "\n".join(lines) + "\n" if lines else ""
    return NotebookSource(text=text, cells=tuple(spans), unparsed=tuple(unparsed))


def _parse_error(code: str) -> str | None:
    """Why the cell is not Python, in one line; None when it parses."""
    try:
        ast.parse(code)
    except SyntaxError as err:
        return f"SyntaxError: {err.msg} (line {err.lineno})"
    except (ValueError, RecursionError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def cell_of(cells: Sequence[CellSpan], line: int) -> tuple[int, int] | None:
    """(cell number, line in that cell) for a line of the concatenated text."""
    for span in cells:
        if span.start <= line <= span.end:
            return span.cell, line - span.start + 1
    return None
