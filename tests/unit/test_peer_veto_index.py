"""PeerVeto finds a file's nodes on a line and their parents from one walk of its tree; what
its checks see is what a walk of the whole tree per finding saw, in the same order."""

from __future__ import annotations

import ast

from torchdoctor.agent.checks.linters.peer_veto import PeerVeto, _Parsed
from torchdoctor.agent.models import Evidence

SOURCE = """\
import random

import torch
from torch.utils.data import DataLoader, TensorDataset


class Trainer:
    def __init__(self, model, data, **loader_kwargs):
        self.model = model
        self.loader = DataLoader(
            TensorDataset(data["x"], data["y"]),
            batch_size=32,
            **loader_kwargs,
        )

    def fit(self, epochs: int) -> None:
        for epoch in range(epochs):
            for x, y in self.loader:
                if random.random() < 0.5:
                    x = torch.flip(x, dims=[-1])
                loss = self.model(x).sub(y).pow(2).mean()
                loss.backward()


def session_token() -> str:
    return "%032x" % random.getrandbits(128)
"""


def walked(tree: ast.Module, line: int) -> list[ast.AST]:
    return [
        node
        for node in ast.walk(tree)
        if getattr(node, "lineno", None) is not None
        and node.lineno <= line <= (getattr(node, "end_lineno", None) or node.lineno)  # type: ignore[attr-defined]
    ]


def test_the_nodes_of_each_line_and_the_parents_are_those_a_walk_finds() -> None:
    tree = ast.parse(SOURCE)
    parsed = _Parsed(tree)
    for line in range(0, SOURCE.count("\n") + 2):
        assert list(parsed.on_line(line)) == walked(tree, line), line
    assert parsed.parents == {
        child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)
    }


def test_findings_on_a_statement_over_several_lines_are_still_ruled_out() -> None:
    """TOR401 on the DataLoader's first line (its `**loader_kwargs` two lines below) and
    bandit B311 inside the loop (no secret named around it) are ruled out, B311 in a function
    that makes a session token is not: one parse for the three."""
    veto = PeerVeto(lambda _: SOURCE)

    def reason(source: str, code: str, line: int) -> str | None:
        evidence = Evidence(
            source=source,
            file="train.py",
            line=line,
            message=code,
            data={"code": code},
        )
        return veto.reason(evidence)

    assert reason("torchfix", "TOR401", 10) is not None
    assert reason("bandit", "B311", 19) is not None
    assert reason("bandit", "B311", 26) is None
