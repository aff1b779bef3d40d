"""A codemod's output formatted as the project formats its code: when the project uses ruff
(a `[tool.ruff]` table in its pyproject.toml, or a ruff.toml), `ruff format` runs on the lines
the fix changed and nowhere else, so a fix never reformats code it did not touch.

The project's settings are read here, through the guarded layer, and only plain values of the
keys that shape formatting are passed on; ruff itself runs `--isolated` and reads nothing of
the audited tree (whose config could point it at files outside the tree).
"""

from __future__ import annotations

import difflib
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from torchdoctor.agent.safefs import GuardedTree

FORMAT_TIMEOUT_S = 10.0
TOP_KEYS = ("line-length", "indent-width")
FORMAT_KEYS = (
    "quote-style",
    "indent-style",
    "line-ending",
    "skip-magic-trailing-comma",
    "docstring-code-format",
)


def ruff_settings(root: Path) -> list[str] | None:
    """`--config` overrides for the project's ruff format settings; None when the project
    does not use ruff (or its config cannot be read)."""
    tree = GuardedTree(root)
    for name in ("ruff.toml", ".ruff.toml", "pyproject.toml"):
        try:
            document = tomllib.loads(tree.read_text(name))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            continue
        tool = document.get("tool") if name == "pyproject.toml" else {"ruff": document}
        table = tool.get("ruff") if isinstance(tool, dict) else None
        if isinstance(table, dict):
            return _overrides(table)
    return None


def _overrides(table: dict[str, Any]) -> list[str]:
    settings = {key: table.get(key) for key in TOP_KEYS}
    section = table.get("format")
    if isinstance(section, dict):
        settings |= {f"format.{key}": section.get(key) for key in FORMAT_KEYS}
    return [
        f"{key} = {_toml_value(value)}"
        for key, value in settings.items()
        if isinstance(value, bool | int | str) and _plain(value)
    ]


def _plain(value: bool | int | str) -> bool:
    if isinstance(value, str):
        return value.replace("-", "").isalnum() and len(value) <= 20
    return isinstance(value, bool) or 0 < value <= 1000


def _toml_value(value: bool | int | str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int) else f'"{value}"'


def changed_ranges(before: str, after: str) -> list[tuple[int, int]]:
    """The 1-based, inclusive line ranges of `after` that are not in `before`."""
    matcher = difflib.SequenceMatcher(None, before.splitlines(), after.splitlines(), autojunk=False)
    return [
        (j1 + 1, j2)
        for tag, _, _, j1, j2 in matcher.get_opcodes()
        if tag in ("replace", "insert") and j2 > j1
    ]


def ruff_path() -> str | None:
    beside = Path(sys.executable).parent / "ruff"
    return str(beside) if beside.is_file() else shutil.which("ruff")


def format_range(ruff: str, settings: list[str], text: str, first: int, last: int) -> str | None:
    # The end is exclusive at column 1 of the next line; ruff clamps it at the end of the text.
    command = [ruff, "format", "--isolated", "--no-cache", f"--range={first}:1-{last + 1}:1"]
    for setting in settings:
        command += ["--config", setting]
    try:
        done = subprocess.run(
            [*command, "-"],
            input=text,
            capture_output=True,
            text=True,
            timeout=FORMAT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 and done.stdout else None


def format_changed_lines(root: Path, before: str, after: str) -> str:
    """`after` with the lines that differ from `before` formatted by ruff as the project
    formats them; `after` unchanged when the project does not use ruff or ruff fails."""
    settings = ruff_settings(root)
    ruff = ruff_path()
    if settings is None or ruff is None:
        return after
    text = after
    # Last range first: formatting one never moves the lines of those before it.
    for first, last in reversed(changed_ranges(before, after)):
        text = format_range(ruff, settings, text, first, last) or text
    return text
