"""`walk_scope` inside the engine's per-module memo: the same nodes in the same order as the
plain walk, each body walked once per module, nothing kept once the module is done."""

from __future__ import annotations

import ast
import textwrap

import pytest

from torchdoctor.agent.checks import loops
from torchdoctor.agent.checks.loops import ScopeMemo, scope_memo, walk_scope

SOURCE = textwrap.dedent(
    """
    def train(model, loader, optimizer):
        total = 0.0
        for x, y in loader:
            loss = model(x).sum()
            def inner():
                return loss * 2
            loss.backward()
            total += loss.item()
        return total / len(loader)
    """
)


def test_memoised_walks_are_the_plain_walks_and_each_statement_is_walked_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fn = ast.parse(SOURCE).body[0]
    assert isinstance(fn, ast.FunctionDef)
    loop = fn.body[1]
    assert isinstance(loop, ast.For)
    plain = {"fn": list(walk_scope(fn.body)), "loop": list(walk_scope(loop.body))}
    walks: list[object] = []
    real = loops._walk_one

    def counted(root: ast.AST, spans: object) -> list[ast.AST]:
        walks.append(root)
        return real(root, spans)  # type: ignore[arg-type]

    monkeypatch.setattr(loops, "_walk_one", counted)
    table: ScopeMemo = {}
    with scope_memo(table):
        for _ in range(3):
            assert list(walk_scope(fn.body)) == plain["fn"]
            assert list(walk_scope(loop.body)) == plain["loop"]
        # a list with the same statements is another key: not confused with fn.body, and
        # cut from the walk already made
        assert list(walk_scope(list(fn.body))) == plain["fn"]
    # the loop's body is cut from the function's walk: only fn.body's own statements are
    # walked, and the function nested in the loop (a list's nodes are each walked whole)
    assert walks == [*fn.body, loop.body[1]]
    assert len(table) == 3
    walks.clear()
    list(walk_scope(fn.body))  # outside the memo: walked every time, nothing kept
    list(walk_scope(fn.body))
    assert walks == fn.body + fn.body and len(table) == 3


def test_an_inner_body_asked_first_then_the_outer_one_give_the_plain_walks() -> None:
    fn = ast.parse(SOURCE).body[0]
    assert isinstance(fn, ast.FunctionDef)
    loop = fn.body[1]
    assert isinstance(loop, ast.For)
    asks: list[list[ast.stmt] | ast.AST] = [
        loop.body,
        loop.body[1:],
        [loop.body[0], loop.body[2]],  # not neighbours: a statement is left between
        fn.body,
        fn,  # a function asked itself is walked, its nested function still is not
        loop.body[1],  # the nested function asked itself: its own body
        loop.iter,
    ]
    plain = [list(walk_scope(ask)) for ask in asks]
    with scope_memo({}):
        assert [list(walk_scope(ask)) for ask in asks] == plain
    inner = loop.body[1]
    assert isinstance(inner, ast.FunctionDef)
    assert inner not in plain[3] and inner.body[0] in plain[5]
