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


def test_memoised_walks_are_the_plain_walks_and_each_body_is_walked_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fn = ast.parse(SOURCE).body[0]
    assert isinstance(fn, ast.FunctionDef)
    loop = fn.body[1]
    assert isinstance(loop, ast.For)
    plain = {"fn": list(walk_scope(fn.body)), "loop": list(walk_scope(loop.body))}
    walks: list[object] = []
    real = loops._walk_scope

    def counted(nodes: list[ast.stmt] | ast.AST) -> object:
        walks.append(nodes)
        return real(nodes)

    monkeypatch.setattr(loops, "_walk_scope", counted)
    table: ScopeMemo = {}
    with scope_memo(table):
        for _ in range(3):
            assert list(walk_scope(fn.body)) == plain["fn"]
            assert list(walk_scope(loop.body)) == plain["loop"]
        # a list with the same statements is another key: walked, not confused with fn.body
        assert list(walk_scope(list(fn.body))) == plain["fn"]
    assert walks == [fn.body, loop.body, fn.body]
    assert len(table) == 3
    walks.clear()
    list(walk_scope(fn.body))  # outside the memo: walked every time, nothing kept
    list(walk_scope(fn.body))
    assert len(walks) == 2 and len(table) == 3
