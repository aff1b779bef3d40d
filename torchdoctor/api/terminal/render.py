"""Messages drawn with rich: tables, diffs and code as such. Every text comes from the audited
code or a server, so none of it is read as markup and control characters are dropped."""

from __future__ import annotations

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from torchdoctor.agent.escape import strip_controls
from torchdoctor.agent.session.models import (
    Block,
    CodeBlock,
    DiffBlock,
    Message,
    TableBlock,
    TextBlock,
)

_TONES = {"plain": "", "note": "yellow", "error": "bold red"}


def _text(value: str, style: str = "") -> Text:
    return Text(strip_controls(value, keep_lines=True), style=style)


def block(item: Block) -> RenderableType:
    if isinstance(item, TextBlock):
        return _text(item.text, _TONES[item.tone])
    if isinstance(item, TableBlock):
        table = Table(title=_text(item.title, "bold") if item.title else None, expand=False)
        for at, column in enumerate(item.columns):  # the first column (ids) is never cut
            table.add_column(_text(column), overflow="fold", no_wrap=at == 0)
        for row in item.rows:
            table.add_row(*(_text(cell) for cell in row))
        return table
    if isinstance(item, DiffBlock):
        code = Syntax(strip_controls(item.diff, keep_lines=True), "diff", word_wrap=True)
        return Panel(code, title=_text(item.title) if item.title else None, title_align="left")
    assert isinstance(item, CodeBlock)
    lexer = {"python": "text", "markdown": "markdown", "text": "text"}[item.language]
    code = Syntax(strip_controls(item.text, keep_lines=True), lexer, word_wrap=True)
    return Panel(code, title=_text(item.title) if item.title else None, title_align="left")


def show(console: Console, message: Message) -> None:
    """An assistant's message as blocks; the user's own lines are on screen already."""
    if message.role == "user":
        console.print(Text("> ", style="bold cyan") + _text(message.plain()))
        return
    console.print(Group(*(block(b) for b in message.blocks)))
