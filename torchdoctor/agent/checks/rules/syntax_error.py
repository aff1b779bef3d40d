"""syntax-error: the file does not parse."""

from __future__ import annotations

import re
import sys
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

    Not reported: a file that fails only because it uses syntax of a newer Python than the
    one torchdoctor runs on (PEP 695's `type Alias = ...`, `class Box[T]:`, `def f[T](...)`,
    Python 3.12): the code is valid where its project runs it (lerobot requires 3.12); the
    file is noted as not audited instead.

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
# PEP 695 (Python 3.12): a `type` alias statement, type parameters on a class or a function.
_TYPE_PARAMETER_SYNTAX = re.compile(
    r"^\s*(type\s+[A-Za-z_]\w*\s*(\[[^\]]*\])?\s*="
    r"|class\s+[A-Za-z_]\w*\s*\[[^\]]*\]\s*[(:]"
    r"|(async\s+)?def\s+[A-Za-z_]\w*\s*\[[^\]]*\]\s*\()"
)


def newer_python_syntax(source: str, err: SyntaxError) -> str | None:
    """What newer Python a file that fails to parse here is written for, when the failing
    line is valid there (`type FeatureDict = dict[str, Any]`, `class Pipeline[T](Base):`);
    None on this interpreter if it already reads that syntax, or for any other error."""
    if sys.version_info >= (3, 12):
        return None
    lines = source.splitlines()
    line = lines[err.lineno - 1] if err.lineno and 0 < err.lineno <= len(lines) else ""
    if _TYPE_PARAMETER_SYNTAX.match(line):
        return "3.12"
    return None


def _hint(code: str) -> str:
    """What the parser's message leaves out on PyTorch code written before Python 3.7:
    `x.cuda(async=True)` (PyTorch 0.3) names a keyword the language has since taken."""
    if _ASYNC_KEYWORD.search(code):
        return (
            ": `async` is a reserved word since Python 3.7; PyTorch 0.4 renamed the argument "
            "`non_blocking=True`"
        )
    return ""
