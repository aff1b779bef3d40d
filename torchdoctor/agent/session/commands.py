"""The session's commands, parsed from one line of input into a typed command (no model
needed); anything that is not a command is a question for the LLM."""

from __future__ import annotations

import shlex
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from torchdoctor.agent.models import Severity, Status

COMMANDS = (
    "findings",
    "show",
    "run",
    "fix",
    "approve",
    "reject",
    "apply",
    "status",
    "ledger",
    "rerun",
    "help",
)
"""Every command word, in the order `help` lists them."""


class CommandError(ValueError):
    """A command with bad arguments; the message says how to write it."""


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FindingsCommand(_Command):
    name: Literal["findings"] = "findings"
    point: int | None = Field(None, ge=1, le=12)
    severity: Severity | None = None
    status: Status | None = None


class ShowCommand(_Command):
    name: Literal["show"] = "show"
    finding: str


class RunCommand(_Command):
    name: Literal["run"] = "run"
    command: str
    steps: int | None = Field(None, ge=1, le=10_000)


class FixCommand(_Command):
    name: Literal["fix"] = "fix"
    finding: str


class DecideCommand(_Command):
    name: Literal["approve", "reject"]
    finding: str
    """A finding id, or `all`."""


class StatusCommand(_Command):
    name: Literal["status"] = "status"
    finding: str
    status: Literal["wont-fix", "needs-human"]
    reason: str = Field(min_length=1, max_length=2000)


class PlainCommand(_Command):
    name: Literal["apply", "ledger", "rerun", "help"]


class Question(_Command):
    name: Literal["question"] = "question"
    text: str


Command = (
    FindingsCommand
    | ShowCommand
    | RunCommand
    | FixCommand
    | DecideCommand
    | StatusCommand
    | PlainCommand
    | Question
)


def parse(line: str) -> Command:
    """The command `line` names, or a `Question` when its first word is no command."""
    text = line.strip()
    first = text.split(maxsplit=1)[0].lower() if text else ""
    if first not in COMMANDS:
        return Question(text=text)
    try:
        words = shlex.split(text)
    except ValueError as err:
        raise CommandError(f"{first}: {err}") from None
    args = words[1:]
    if first == "findings":
        return _findings(args)
    if first in ("show", "fix"):
        finding = _one(first, args, "ID")
        return ShowCommand(finding=finding) if first == "show" else FixCommand(finding=finding)
    if first in ("approve", "reject"):
        return DecideCommand(name=first, finding=_one(first, args, "ID|all"))
    if first == "run":
        return _run(args)
    if first == "status":
        if len(args) < 3 or args[1] not in ("wont-fix", "needs-human"):
            raise CommandError('usage: status ID wont-fix|needs-human "reason"')
        return StatusCommand(finding=args[0], status=args[1], reason=" ".join(args[2:]))
    if args:
        raise CommandError(f"usage: {first} (no arguments)")
    return PlainCommand(name=first)


def _one(name: str, args: list[str], what: str) -> str:
    if len(args) != 1:
        raise CommandError(f"usage: {name} {what}")
    return args[0]


def _findings(args: list[str]) -> FindingsCommand:
    """Filters in any order: a point number, a severity, a status."""
    command = FindingsCommand()
    for arg in args:
        word = arg.lower()
        if word.isdigit() and 1 <= int(word) <= 12:
            command.point = int(word)
        elif word in Severity.__members__.values():
            command.severity = Severity(word)
        elif word in Status.__members__.values():
            command.status = Status(word)
        else:
            raise CommandError(
                f"findings: {arg!r} is no point (1-12), severity "
                f"({', '.join(Severity)}) or status ({', '.join(Status)})"
            )
    return command


def _run(args: list[str]) -> RunCommand:
    steps: int | None = None
    if "--steps" in args:
        at = args.index("--steps")
        if at + 1 >= len(args) or not args[at + 1].isdigit() or int(args[at + 1]) < 1:
            raise CommandError("run: --steps takes a positive number")
        steps = int(args[at + 1])
        args = args[:at] + args[at + 2 :]
    if len(args) != 1:
        raise CommandError('usage: run "python train.py --epochs 1" [--steps N]')
    return RunCommand(command=args[0], steps=steps)
