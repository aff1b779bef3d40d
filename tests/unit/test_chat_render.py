"""The terminal draws what the audited code says as inert text: rich markup stays literal and
escape sequences are dropped, in every kind of block; ids are never cut in narrow terminals."""

from __future__ import annotations

import io

from rich.console import Console

from torchdoctor.agent.session.models import CodeBlock, DiffBlock, Message, TableBlock, TextBlock
from torchdoctor.api.terminal.render import show

HOSTILE = "[bold red]pwned[/] \x1b[2J\x1b]0;title\x07 end"


def drawn(message: Message, width: int = 100) -> str:
    out = io.StringIO()
    show(Console(file=out, width=width, force_terminal=False, color_system=None), message)
    return out.getvalue()


def test_hostile_text_is_shown_literally_in_every_block() -> None:
    message = Message(
        role="assistant",
        blocks=[
            TextBlock(text=HOSTILE),
            TableBlock(title=HOSTILE, columns=["id", HOSTILE], rows=[["TD-1", HOSTILE]]),
            DiffBlock(title=HOSTILE, diff=f"--- a/x.py\n+++ b/x.py\n+{HOSTILE}\n"),
            CodeBlock(title=HOSTILE, text=HOSTILE, language="python"),
        ],
    )
    screen = drawn(message)
    assert "\x1b" not in screen and "\x07" not in screen
    assert screen.count("[bold red]pwned[/]") >= 6


def test_ids_are_never_cut_in_a_narrow_table() -> None:
    table = TableBlock(columns=["id", "title"], rows=[["TD-821eb48c9094", "a long title " * 8]])
    assert "TD-821eb48c9094" in drawn(Message(role="assistant", blocks=[table]), width=50)
