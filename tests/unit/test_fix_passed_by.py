"""A change the run went past without taking (a `--resume` branch before the training loop)
is unverified at once: no run left to finish can reach it. Shapes from kuangliu/pytorch-cifar
(a module-level script) and the `main()` scripts of pytorch/examples."""

from __future__ import annotations

from pathlib import Path

import pytest

from torchdoctor.agent.fixes import verify
from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.models import SmokeRun
from torchdoctor.agent.fixes.reached import passed_by
from torchdoctor.agent.fixes.verify import FixSpec, Verifier

MODULE_SCRIPT = """\
import torch
net = torch.nn.Linear(2, 2)
if args.resume:
    checkpoint = torch.load('./checkpoint/ckpt.pth')
    net.load_state_dict(checkpoint['net'])
for epoch in range(200):
    train(epoch)
"""
RESUME, LOOP = 4, 7

MAIN_SCRIPT = """\
import torch


def main():
    net = torch.nn.Linear(2, 2)
    try:
        state = torch.load(args.resume)
    except FileNotFoundError:
        state = None
    for epoch in range(10):
        train(net, epoch)


if __name__ == "__main__":
    main()
"""

PER_EPOCH = """\
def train(epoch):
    if epoch > 5:
        adjust()
    for batch in loader:
        step(batch)


for epoch in range(10):
    train(epoch)
"""


def test_a_module_level_branch_before_the_loop_that_ran_is_passed_for_good() -> None:
    assert passed_by(MODULE_SCRIPT, RESUME, {1, 2, 3, 6, 7})


def test_a_block_of_main_called_once_is_passed_once_a_later_statement_ran() -> None:
    assert passed_by(MAIN_SCRIPT, 7, {4, 5, 6, 8, 9, 10, 11, 14, 15})


def test_a_function_called_every_epoch_may_still_take_the_branch() -> None:
    assert not passed_by(PER_EPOCH, 3, {1, 2, 4, 5, 8, 9})


def test_a_line_in_the_loop_the_run_is_in_or_after_it_may_still_run() -> None:
    in_loop = "for step in range(9):\n    x = 1\n    if step == 8:\n        y = 2\n"
    assert not passed_by(in_loop, 4, {1, 2, 3})
    after = MODULE_SCRIPT + "torch.save(net, 'n.pt')\n"
    assert not passed_by(after, 8, {1, 2, 3, 6, 7})


@pytest.mark.parametrize(
    "call",
    [
        "for _ in range(2):\n    main()\n",
        "main()\nmain()\n",
        "callbacks = [main]\n",
        "results = [main() for _ in range(2)]\n",
    ],
)
def test_a_main_that_may_run_twice_is_not_passed_for_good(call: str) -> None:
    source = MAIN_SCRIPT.replace('if __name__ == "__main__":\n    main()\n', call)
    assert not passed_by(source, 7, set(range(1, 30)) - {7})


def test_the_verifier_says_so_without_a_run_left_to_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, copy = tmp_path / "root", tmp_path / "copy"
    for folder, text in (
        (root, MODULE_SCRIPT),
        (copy, MODULE_SCRIPT.replace("ckpt.pth')", "ckpt.pth', map_location='cpu')")),
    ):
        folder.mkdir()
        (folder / "main.py").write_text(text, encoding="utf-8")

    def no_second_run(*_a: object, **_k: object) -> SmokeRun:
        raise AssertionError("a run left to finish was made")

    monkeypatch.setattr(verify, "smoke_run", no_second_run)
    verifier = Verifier(root, object(), ["python", "main.py"], baseline=SmokeRun(ok=True))  # type: ignore[arg-type]
    after = SmokeRun(ok=True, stopped_in_loop=True, executed_lines={"main.py": [1, 2, 3, 6, 7]})
    codemod = codemod_for("torch-load-no-map-location")
    assert codemod is not None

    step = verifier._executed(copy, ["main.py"], after, FixSpec.of(codemod))

    assert not step.ok
    assert step.detail == (
        "unverified: the run did not execute the change (main.py:4 never ran under "
        "`python main.py`: the run went past it without taking its branch)"
    )
