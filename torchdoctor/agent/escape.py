"""Escaping of untrusted text (file names, evidence, run output, model text) for each format.

Everything that reaches a report, the ledger or a terminal may come from the audited
repository or from code it ran: a file name with a newline and `- Status: wont-fix`, ANSI and
OSC sequences (clipboard writes, title changes, screen clears), `<script>`, an unclosed code
fence, rich markup such as `[/yellow]`. Each helper makes such text inert for one format and
never raises.
"""

from __future__ import annotations

import re

from rich.markup import escape as rich_escape

# ESC-introduced sequences: CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), DCS/SOS/PM/APC
# strings, and two-character escapes; then their 8-bit C1 forms; then every other control.
_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b[\]PX^_][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[@-Z\\-_]"
    r"|\x9b[0-?]*[ -/]*[@-~]"
    r"|[\x9d\x90\x98\x9e\x9f][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
)
_CONTROLS_KEEP_LINES = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_BACKTICKS = re.compile(r"`+")
_FENCE_RUN = re.compile(r"^[ \t]*(`{3,}|~{3,})", re.MULTILINE)


def strip_controls(text: object, keep_lines: bool = False) -> str:
    """`text` without terminal escape sequences and control characters (newlines and tabs
    kept when `keep_lines`), undecodable surrogates replaced."""
    value = str(text).encode("utf-8", "replace").decode("utf-8")
    value = _ANSI.sub("", value)
    return (_CONTROLS_KEEP_LINES if keep_lines else _CONTROLS).sub("", value.replace("\t", " "))


def one_line(text: object) -> str:
    """Controls stripped, every run of whitespace (newlines included) one space."""
    return " ".join(strip_controls(text, keep_lines=True).split())


def md_text(text: object) -> str:
    """Inline markdown that renders as plain text on one line: no HTML, no line breaks."""
    return one_line(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def md_cell(text: object) -> str:
    """`md_text` for a table cell (pipes escaped)."""
    return md_text(text).replace("|", "\\|")


def md_code(text: object) -> str:
    """An inline code span holding `text` literally, however many backticks it contains."""
    value = one_line(text)
    longest = max((len(run) for run in _BACKTICKS.findall(value)), default=0)
    ticks = "`" * (longest + 1)
    pad = " " if value.startswith("`") or value.endswith("`") or not value.strip() else ""
    return f"{ticks}{pad}{value}{pad}{ticks}"


def md_fence(text: object, info: str = "") -> str:
    """A fenced code block that `text` cannot close early: the fence is longer than any
    backtick or tilde fence inside."""
    value = strip_controls(text, keep_lines=True).rstrip("\n")
    longest = max((len(m.group(1)) for m in _FENCE_RUN.finditer(value)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{value}\n{fence}"


def terminal(text: object) -> str:
    """Text for a rich console: no escape sequences, and markup such as `[/yellow]` inert."""
    return rich_escape(one_line(text))


def terminal_lines(text: object) -> str:
    """`terminal`, keeping the line breaks (a diff shown before its approval question)."""
    return rich_escape(strip_controls(text, keep_lines=True))


def sarif_text(text: object) -> str:
    """Plain SARIF message text: controls stripped (JSON escapes the rest)."""
    return strip_controls(text, keep_lines=True)
