"""Codemods for three high-severity rules: what each edits, and what it leaves to a human."""

from __future__ import annotations

import ast

from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.models import FixTarget


def _fix(rule: str, source: str, line: int) -> str | None:
    codemod = codemod_for(rule)
    assert codemod is not None
    return codemod.transform(source, FixTarget(rule=rule, file="m.py", line=line, end_line=line))


def _refusal(rule: str, source: str, line: int) -> str | None:
    codemod = codemod_for(rule)
    assert codemod is not None
    target = FixTarget(rule=rule, file="m.py", line=line, end_line=line)
    return codemod.explain(source, target)


DROPOUT = """\
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def forward(self, x, p):
        a = F.dropout(x, p=p, inplace=False)
        b = F.dropout2d(a, p, True)
        c = F.dropout(b, p, training=True)
        return c
"""


def test_functional_dropout_follows_the_module_mode_keyword_arguments_kept() -> None:
    fixed = _fix("functional-dropout-always-on", DROPOUT, 7)
    assert fixed is not None
    assert "F.dropout(x, p=p, inplace=False, training=self.training)" in fixed
    ast.parse(fixed)


def test_functional_dropout_written_on_is_left_to_a_human() -> None:
    for line in (8, 9):  # positional True, keyword True: Monte-Carlo dropout is a choice
        assert _fix("functional-dropout-always-on", DROPOUT, line) is None
        assert "deliberate" in (_refusal("functional-dropout-always-on", DROPOUT, line) or "")


def test_functional_dropout_outside_a_self_method_is_refused() -> None:
    source = DROPOUT.replace("def forward(self, x, p)", "def forward(me, x, p)")
    assert _fix("functional-dropout-always-on", source, 7) is None
    assert "self" in (_refusal("functional-dropout-always-on", source, 7) or "")


def test_scalar_loss_indexed_reads_item_for_both_idioms() -> None:
    source = "def log(loss, total):\n    return loss.data[0] + total[1], loss[0]\n"
    once = _fix("scalar-loss-indexed", source, 2)
    assert once == "def log(loss, total):\n    return loss.item() + total[1], loss[0]\n"
    twice = _fix("scalar-loss-indexed", once, 2)
    assert twice == "def log(loss, total):\n    return loss.item() + total[1], loss.item()\n"
    assert _fix("scalar-loss-indexed", twice, 2) is None  # `total[1]` is not a loss read


def test_flatten_view_becomes_reshape_only_for_the_flattening_view() -> None:
    source = "def f(c, k, b):\n    return c[:k].view(b, -1), c[:k].view(-1).sum()\n"
    fixed = _fix("flatten-view-of-transposed", source, 2)
    assert fixed == "def f(c, k, b):\n    return c[:k].view(b, -1), c[:k].reshape(-1).sum()\n"


CONTAINERS = """\
import torch
import torch.nn as nn


class Heads(nn.Module):
    def __init__(self, dim, tasks):
        super().__init__()
        self.heads = {"cls": nn.Linear(dim, 2), "box": nn.Linear(dim, 4)}
        self.scales = [nn.Parameter(torch.ones(dim)) for _ in tasks]
        self.mixed = [nn.Linear(dim, dim), nn.Parameter(torch.zeros(dim))]
        self.by_task = {t: nn.Linear(dim, 1) for t in tasks}
        self.stages = []
        for _ in tasks:
            self.stages.append(nn.Linear(dim, dim))
"""


def test_plain_containers_become_the_registering_ones() -> None:
    rule = "module-list-not-registered"
    assert 'self.heads = nn.ModuleDict({"cls"' in (_fix(rule, CONTAINERS, 8) or "")
    assert "self.scales = nn.ParameterList([nn.Parameter(" in (_fix(rule, CONTAINERS, 9) or "")
    assert "self.stages = nn.ModuleList([])" in (_fix(rule, CONTAINERS, 12) or "")


def test_mixed_containers_and_keys_that_may_not_be_strings_are_left_to_a_human() -> None:
    rule = "module-list-not-registered"
    assert _fix(rule, CONTAINERS, 10) is None
    assert "split it" in (_refusal(rule, CONTAINERS, 10) or "")
    assert _fix(rule, CONTAINERS, 11) is None
    assert "string keys" in (_refusal(rule, CONTAINERS, 11) or "")


def test_shallow_copy_of_a_module_becomes_a_deep_one_only_when_spelled_copy_copy() -> None:
    spelled = "import copy\n\n\ndef snapshot(net):\n    return copy.copy(net)\n"
    assert _fix("module-shallow-copy", spelled, 5) == spelled.replace("copy.copy", "copy.deepcopy")
    bare = "from copy import copy\n\n\ndef snapshot(net):\n    return copy(net)\n"
    assert _fix("module-shallow-copy", bare, 5) is None
    assert "deepcopy" in (_refusal("module-shallow-copy", bare, 5) or "")


def test_require_grad_typo_is_spelled_only_where_assigned() -> None:
    source = (
        "def freeze(net):\n"
        "    for p in net.parameters():\n"
        "        p.require_grad = p.require_grad and False\n"
    )
    fixed = _fix("requires-grad-typo", source, 3)
    assert fixed == source.replace("p.require_grad =", "p.requires_grad =")


PROBABILITIES = """\
import torch.nn.functional as F


def losses(model, x, y, weight):
    p = model(x).sigmoid()
    a = F.binary_cross_entropy_with_logits(p, y)
    b = F.binary_cross_entropy_with_logits(p, y, pos_weight=weight)
    return a + b
"""


def test_a_logits_function_given_probabilities_becomes_the_probability_loss() -> None:
    rule = "sigmoid-into-logits-loss"
    fixed = _fix(rule, PROBABILITIES, 6)
    assert fixed is not None and "a = F.binary_cross_entropy(p, y)" in fixed
    assert _fix(rule, PROBABILITIES, 7) is None  # pos_weight exists only with logits
    assert "pos_weight" in (_refusal(rule, PROBABILITIES, 7) or "")


REMOVED = """\
import torch


def decompose(A, b, M):
    x, lu = torch.solve(b, A)
    r = torch.matrix_rank(M, symmetric=True)
    e, v = torch.symeig(M, eigenvectors=True, upper=False)
    q = torch.symeig(M)
    s = torch.lstsq(b, A)
    return x, lu, r, e, v, q, s
"""


def _removed(line: int, name: str) -> tuple[str | None, str | None]:
    codemod = codemod_for("removed-torch-api")
    assert codemod is not None
    target = FixTarget(
        rule="removed-torch-api", file="m.py", line=line, end_line=line, data={"name": name}
    )
    return codemod.transform(REMOVED, target), codemod.explain(REMOVED, target)


def test_removed_calls_get_their_linalg_replacement_when_the_result_is_the_same() -> None:
    fixed, _ = _removed(7, "torch.symeig")
    assert fixed is not None and 'e, v = torch.linalg.eigh(M, UPLO="L")' in fixed


def test_removed_calls_whose_results_differ_are_left_to_a_human() -> None:
    for line, name, why in (
        (5, "torch.solve", "LU"),  # the LU factor is used
        (6, "torch.matrix_rank", "symmetric"),
        (8, "torch.symeig", "eigenvectors=True"),  # eigenvalues only: a different call
        (9, "torch.lstsq", "different result"),
    ):
        fixed, refusal = _removed(line, name)
        assert fixed is None
        assert why in (refusal or ""), (line, refusal)


def test_scalar_loss_indexed_fixes_the_indexing_its_finding_names() -> None:
    # two losses read on one line of an old GAN's log: each is a finding of its own, and the
    # fix of the second must not rewrite the first
    source = "def log(step, d_loss, g_loss):\n    print(step, d_loss.data[0], g_loss.data[0])\n"
    codemod = codemod_for("scalar-loss-indexed")
    assert codemod is not None
    target = FixTarget(
        rule="scalar-loss-indexed",
        file="m.py",
        line=2,
        end_line=2,
        data={"indexed": "g_loss.data[0]"},
    )
    assert codemod.transform(source, target) == (
        "def log(step, d_loss, g_loss):\n    print(step, d_loss.data[0], g_loss.item())\n"
    )
    first = target.model_copy(update={"data": {"indexed": "d_loss.data [0]"}})
    assert codemod.transform(source, first) == (
        "def log(step, d_loss, g_loss):\n    print(step, d_loss.item(), g_loss.data[0])\n"
    )
