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


_ONCE_BLOCKS = (ast.If, ast.With, ast.AsyncWith, ast.Try, ast.TryStar, ast.Match)
"""Compound statements whose blocks run at most once each time the statement runs."""


def passed_by(source: str, line: int, executed: set[int]) -> bool:
    """The run went past `line` without running it, and cannot come back: a statement after
    the one holding it, in the same body, ran, and that body runs once. Bodies that run once:
    the module's, the blocks of an `if`/`with`/`try` in one, and the body of a function the
    module calls once outside any loop (`main()` under `if __name__ == "__main__":`). A
    `--resume` branch before the training loop is such a line; a line in `train(epoch)`,
    called every epoch, is not (a later epoch may take the branch), nor is one in a loop the
    run has not left."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    body: list[ast.stmt] = tree.body
    while True:
        holding = next((s for s in body if s.lineno <= line <= (s.end_lineno or s.lineno)), None)
        if holding is None:
            return False
        end = holding.end_lineno or holding.lineno
        later = [s for s in body if s.lineno > end and not isinstance(s, _DEFINITIONS)]
        ran_later = any(
            s.lineno <= r <= (s.end_lineno or s.lineno) for s in later for r in executed
        )
        if ran_later and not isinstance(holding, _DEFINITIONS):  # a def's body runs when called
            return True
        inner = _block_holding(holding, line, tree)
        if inner is None:
            return False
        body = inner


_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _block_holding(statement: ast.stmt, line: int, tree: ast.Module) -> list[ast.stmt] | None:
    """The block of `statement` that holds `line`, when that block runs at most once per run
    of the body around it; None for a loop's body, a class, or a function called more than
    once (or from a loop, or not by name)."""
    if isinstance(statement, ast.FunctionDef | ast.AsyncFunctionDef):
        return statement.body if _called_once(tree, statement.name) else None
    if not isinstance(statement, _ONCE_BLOCKS):
        return None
    blocks: list[list[ast.stmt]] = []
    if isinstance(statement, ast.If):
        blocks = [statement.body, statement.orelse]
    elif isinstance(statement, ast.With | ast.AsyncWith):
        blocks = [statement.body]
    elif isinstance(statement, ast.Try | ast.TryStar):
        blocks = [statement.body, statement.orelse, statement.finalbody]
        blocks += [handler.body for handler in statement.handlers]
    else:
        blocks = [case.body for case in statement.cases]
    return next(
        (b for b in blocks if b and b[0].lineno <= line <= (b[-1].end_lineno or b[-1].lineno)),
        None,
    )


def _called_once(tree: ast.Module, name: str) -> bool:
    """`name` is read once in the module, as the callee of a call that no loop, function or
    comprehension encloses: the function runs at most once (another module importing it is
    not seen; a script's `main` is not imported)."""
    uses: list[bool] = []  # per read of `name`: called from a place that runs once

    def visit(node: ast.AST, once: bool) -> None:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == name:
                uses.append(once)
            for child in [*node.args, *node.keywords]:
                visit(child, once)
            return
        if isinstance(node, ast.Name) and node.id == name:
            uses.append(False)  # passed around, not called: it may run any number of times
            return
        repeats = isinstance(
            node,
            ast.For | ast.AsyncFor | ast.While | ast.FunctionDef | ast.AsyncFunctionDef
            | ast.Lambda | ast.ClassDef | ast.ListComp | ast.SetComp | ast.DictComp
            | ast.GeneratorExp,
        )  # fmt: skip
        for child in ast.iter_child_nodes(node):
            visit(child, once and not repeats)

    visit(tree, True)
    return uses == [True]
