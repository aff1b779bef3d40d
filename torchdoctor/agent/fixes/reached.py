"""Did the verification run execute the change? A run that never reaches the patched lines
proves nothing about the fix, so such a fix stays unverified.

The changed lines come from the file before and after the patch; each change block counts as
reached when a line of a statement it touches ran (line events fire on a statement's lines,
not on comments or blank lines). A contiguous change that reaches past the end of a loop
(`losses.append(loss.detach())` then `losses = [float(v) for v in losses]` after it) is two
blocks, one per loop: the line in the loop running says nothing about the line after it.
Import-only blocks run whenever the module is imported, so they count only when the change is
nothing but imports.
"""

from __future__ import annotations

import ast
import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class Block:
    """One contiguous change, as statement line spans of the patched file."""

    spans: tuple[tuple[int, int], ...]
    imports_only: bool


def change_blocks(before: str, after: str) -> list[Block]:
    """The patched file's change blocks (new-side line numbers, mapped to statements)."""
    old, new = before.splitlines(), after.splitlines()
    try:
        tree = ast.parse(after)
    except SyntaxError:
        return []
    statements = _statements(tree)
    blocks: list[Block] = []
    matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    for tag, _i1, _i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        lines = range(j1 + 1, j2 + 1) if j2 > j1 else range(min(j1 + 1, len(new)), j1 + 2)
        found = {s for line in lines for s in statements if s[0] <= line <= s[1]}
        spans = {_innermost(found, line) for line in lines} - {None}
        by_loop: dict[int, list[tuple[int, int]]] = {}
        for span in sorted(s for s in spans if s is not None):
            by_loop.setdefault(statements[span].loop, []).append(span)
        for group in by_loop.values():
            blocks.append(
                Block(
                    spans=tuple(group),
                    imports_only=all(statements[s].is_import for s in group),
                )
            )
    return sorted(blocks, key=lambda b: b.spans)


@dataclass(frozen=True)
class _Statement:
    is_import: bool
    loop: int
    """The innermost loop around the statement (its node's id; 0: none)."""


def _statements(tree: ast.Module) -> dict[tuple[int, int], _Statement]:
    """(first, last) line of every simple statement and compound statement header -> whether
    it is an import, and the loop it runs in (a loop's header runs in the loop around it)."""
    spans: dict[tuple[int, int], _Statement] = {}

    def visit(node: ast.AST, loop: int) -> None:
        if isinstance(node, ast.stmt):
            end = node.end_lineno or node.lineno
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                decorators = [d.lineno for d in getattr(node, "decorator_list", [])]
                end = max(node.lineno, body[0].lineno - 1)
                spans[(min([node.lineno, *decorators]), end)] = _Statement(False, loop)
            else:
                is_import = isinstance(node, ast.Import | ast.ImportFrom)
                spans[(node.lineno, end)] = _Statement(is_import, loop)
        inner = id(node) if isinstance(node, ast.For | ast.AsyncFor | ast.While) else loop
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, 0)
    return spans


def _innermost(spans: set[tuple[int, int]], line: int) -> tuple[int, int] | None:
    holding = [s for s in spans if s[0] <= line <= s[1]]
    return min(holding, key=lambda s: s[1] - s[0], default=None)


def unreached(before: str, after: str, executed: set[int]) -> tuple[int, list[int]]:
    """(how many change blocks the check applies to, first lines of the blocks that did not
    run); an empty list means the run executed the change."""
    blocks = change_blocks(before, after)
    code = [b for b in blocks if not b.imports_only] or blocks
    missed = [
        b.spans[0][0]
        for b in code
        if not any(first <= line <= last for first, last in b.spans for line in executed)
    ]
    return len(code), missed
