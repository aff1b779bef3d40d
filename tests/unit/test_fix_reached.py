"""Which change blocks a run executed (issue 13, item 1): the pure part of the check."""

from __future__ import annotations

from torchdoctor.agent.fixes.reached import change_blocks, unreached

BEFORE = """\
import torch


def evaluate(model, loader):
    with torch.no_grad():
        return [model(x) for x in loader]


def never_called():
    return 1
"""
AFTER = """\
import random
import torch


def evaluate(model, loader):
    model.eval()
    with torch.no_grad():
        return [model(x) for x in loader]


def never_called():
    return 2
"""


def test_change_blocks_are_statements_of_the_patched_file() -> None:
    blocks = change_blocks(BEFORE, AFTER)
    assert [(b.spans, b.imports_only) for b in blocks] == [
        (((1, 1),), True),
        (((6, 6),), False),
        (((12, 12),), False),
    ]


def test_a_block_counts_as_run_only_when_one_of_its_statements_ran() -> None:
    assert unreached(BEFORE, AFTER, {1, 2, 5, 6, 7, 8, 11, 12}) == (2, [])
    assert unreached(BEFORE, AFTER, {1, 2, 5, 6, 7, 8, 11}) == (2, [12])
    assert unreached(BEFORE, AFTER, set()) == (2, [6, 12])


def test_an_import_only_change_needs_the_module_to_run() -> None:
    before, after = "import torch\nx = 1\n", "import os\nimport torch\nx = 1\n"
    assert unreached(before, after, {1, 2, 3}) == (1, [])
    assert unreached(before, after, set()) == (1, [1])


def test_a_deletion_is_checked_at_the_line_that_follows_it() -> None:
    before = "a = 1\nb = a\nc = b\n"
    after = "a = 1\nc = a\n"
    assert unreached(before, after, {1, 2}) == (1, [])
    assert unreached(before, after, {1}) == (1, [2])


def test_a_change_reaching_past_the_end_of_a_loop_is_a_block_per_loop() -> None:
    # the deferred `.item()` of the GPT-2 trainer: the line in the loop ran under the harness,
    # which stops the script inside its last step; the line after the loop did not
    before = (
        "losses = []\n"
        "for step in range(10):\n"
        "    loss = step * 2.0\n"
        "    losses.append(loss.item())\n"
        "print(losses)\n"
    )
    after = before.replace(
        "    losses.append(loss.item())\n",
        "    losses.append(loss.detach())\nlosses = [float(v) for v in losses]\n",
    )
    assert [b.spans for b in change_blocks(before, after)] == [((4, 4),), ((5, 5),)]
    assert unreached(before, after, {1, 2, 3, 4}) == (2, [5])
    assert unreached(before, after, {1, 2, 3, 4, 5, 6}) == (2, [])
    # a loop's header runs in the code around the loop: a changed header and a changed body
    # are two blocks, and a body that never ran (zero iterations) leaves the fix unverified
    retimed = before.replace(
        "range(10):\n    loss = step * 2.0", "range(20):\n    loss = step * 3.0"
    )
    assert [b.spans for b in change_blocks(before, retimed)] == [((2, 2),), ((3, 3),)]
    assert unreached(before, retimed, {1, 2, 5}) == (2, [3])
