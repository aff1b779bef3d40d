"""`--run` commands: plain Python, torchrun and `python -m torch.distributed.run` forms."""

from __future__ import annotations

import pytest

from torchdoctor.agent.launch import Launch, parse_launch
from torchdoctor.agent.probing import RunRequest, harness_command


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("python -u train.py --lr 1", Launch(script="train.py", args=["--lr", "1"])),
        (
            "torchrun --nproc-per-node 2 train.py --epochs 1",
            Launch(script="train.py", args=["--epochs", "1"], nproc=2),
        ),
        ("torchrun --nproc_per_node=4 --standalone train.py", Launch(script="train.py", nproc=4)),
        (
            "python -m torch.distributed.run --nnodes 1 --nproc-per-node 2 t.py",
            Launch(script="t.py", nproc=2),
        ),
        (
            "torchrun --rdzv-endpoint host:29400 --nproc-per-node auto t.py",
            Launch(script="t.py", nproc=2),
        ),
        ("torchrun t.py", Launch(script="t.py")),
        ("/usr/bin/python3.11 train.py -x", Launch(script="train.py", args=["-x"])),
        ("train.py --epochs 1", Launch(script="train.py", args=["--epochs", "1"])),
    ],
)
def test_commands_name_the_script_its_arguments_and_the_process_count(
    command: str, expected: Launch
) -> None:
    assert parse_launch(command) == expected


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ("torchrun --nnodes 2 --nproc-per-node 2 t.py", "single node"),
        ("torchrun -m pkg.train", "not a module"),
        ("torchrun --nproc-per-node 64 t.py", "1-8"),
        ("torchrun --no-python ./run.sh", "no Python script"),
        ("torchrun --bogus 1 t.py", "unknown launcher option"),
        ("bash train.sh", "expected"),
    ],
)
def test_commands_the_sandbox_cannot_run_are_refused_with_the_reason(
    command: str, reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_launch(command)


def test_a_distributed_run_launches_the_harness_on_every_rank_on_loopback() -> None:
    command = harness_command(RunRequest(), "train.py", ["--lr", "1"], nproc=2)
    launcher = command[: command.index("torchdoctor.sandbox.probes")]
    assert launcher[1:3] == ["-m", "torch.distributed.run"]
    assert (
        "--nproc-per-node" in launcher and launcher[launcher.index("--nproc-per-node") + 1] == "2"
    )
    assert launcher[launcher.index("--master-addr") + 1] == "127.0.0.1"
    assert command[-3:] == ["--", "--lr", "1"]
