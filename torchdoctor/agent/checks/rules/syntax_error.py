"""syntax-error: the file does not parse."""

from __future__ import annotations

import re
from typing import ClassVar

from torchdoctor.agent.checks.base import RawFinding, Rule
from torchdoctor.agent.models import Severity


class SyntaxErrorRule(Rule):
    """Detects a Python file that the parser rejects.

    Why it matters: nothing in the file can run, and no other check can read it; the rest of
    the repository is still audited.

    Example:
        def train(model
            loss = model(x)

    Fix: correct the syntax at the reported line (the parser's message says what it expected).
    """

    id = "syntax-error"
    point = 1
    severity = Severity.CRITICAL
    title = "File does not parse"
    items: ClassVar[tuple[str, ...]] = ("1.1",)

    @classmethod
    def finding(cls, path: str, source: str, err: SyntaxError) -> RawFinding:
        lines = source.splitlines()
        line = max(1, min(err.lineno or 1, max(1, len(lines))))
        first = max(1, line - 2)
        last = min(len(lines), line + 2)
        excerpt = "\n".join(
            f"{'>' if n == line else ' '} {n} | {lines[n - 1]}" for n in range(first, last + 1)
        )
        code = lines[line - 1] if lines else ""
        return RawFinding(
            rule=cls.id,
            file=path,
            line=line,
            end_line=line,
            code=code,
            message=f"SyntaxError: {err.msg} (line {err.lineno}, column {err.offset})"
            + _hint(code),
            severity=cls.severity,
            excerpt=excerpt,
        )


_ASYNC_KEYWORD = re.compile(r"[(,]\s*async\s*=")


def _hint(code: str) -> str:
    """What the parser's message leaves out on PyTorch code written before Python 3.7:
    `x.cuda(async=True)` (PyTorch 0.3) names a keyword the language has since taken."""
    if _ASYNC_KEYWORD.search(code):
        return (
            ": `async` is a reserved word since Python 3.7; PyTorch 0.4 renamed the argument "
            "`non_blocking=True`"
        )
    return ""
