"""The Jinja environment of the Markdown outputs (ledger and report): one, built on first use,
since importing Jinja compiles its lexer's patterns, which costs more than a small audit's
analysis."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from torchdoctor.agent.escape import md_cell, md_code, md_fence, md_text

if TYPE_CHECKING:
    from jinja2 import Environment


@cache
def templates() -> Environment:
    """Templates under torchdoctor/agent/templates, with the Markdown escaping filters."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(
        loader=PackageLoader("torchdoctor.agent", "templates"),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["cell"] = md_cell
    env.filters["text"] = md_text
    env.filters["code"] = md_code
    env.filters["fence"] = md_fence
    return env
