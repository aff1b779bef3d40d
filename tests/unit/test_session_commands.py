"""The session's command line: each command parsed into its typed form, bad arguments refused
with the usage, anything else a question for the LLM."""

from __future__ import annotations

import pytest

from torchdoctor.agent.models import Severity, Status
from torchdoctor.agent.session.commands import (
    CommandError,
    DecideCommand,
    FindingsCommand,
    PlainCommand,
    Question,
    RunCommand,
    StatusCommand,
    parse,
)


def test_commands_parse_into_their_typed_form() -> None:
    assert parse("findings 3 HIGH open") == FindingsCommand(
        point=3, severity=Severity.HIGH, status=Status.OPEN
    )
    assert parse('run "python train.py --epochs 1" --steps 5') == RunCommand(
        command="python train.py --epochs 1", steps=5
    )
    assert parse("approve all") == DecideCommand(name="approve", finding="all")
    assert parse('status TD-1 wont-fix "seeded in conftest"') == StatusCommand(
        finding="TD-1", status="wont-fix", reason="seeded in conftest"
    )
    assert parse("  apply ") == PlainCommand(name="apply")


def test_anything_else_is_a_question() -> None:
    assert parse("why is the loss flat?") == Question(text="why is the loss flat?")
    assert parse("fixing this would help?") == Question(text="fixing this would help?")


@pytest.mark.parametrize(
    ("line", "usage"),
    [
        ("findings 13", "no point"),
        ("show", "usage: show ID"),
        ("run", "usage: run"),
        ("run 'python a.py' --steps 0", "--steps"),
        ("status TD-1 done because", "usage: status"),
        ("apply now", "no arguments"),
        ('run "python a.py', "quotation"),
    ],
)
def test_bad_arguments_say_how_to_write_the_command(line: str, usage: str) -> None:
    with pytest.raises(CommandError, match=usage):
        parse(line)
