"""terminal-size-from-stty: the terminal size read from `stty size` with no fallback."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_RUNNERS = frozenset(
    {"os.popen", "subprocess.check_output", "subprocess.getoutput", "subprocess.run"}
)
_CAUGHT = frozenset({"ValueError", "Exception", "BaseException"})


class TerminalSizeFromStty(Rule):
    """Detects the terminal size read by running `stty size`, with nothing to fall back on
    when there is no terminal: `_, term_width = os.popen('stty size', 'r').read().split()`,
    the progress-bar helper copied from kuangliu/pytorch-cifar's `utils.py` into many
    training repositories.

    Why it matters: `stty` asks standard input's terminal; under nohup, a batch scheduler,
    an IDE's run button, a container, CI or on Windows there is none, `stty` prints nothing,
    and the unpacking raises `ValueError` when the module is imported: the training never
    starts (pytorch-cifar issue 44, NTS-Net 22, DeepLung 44, Facial-Expression-Recognition
    140, wiki2bio 5 all report it).

    Example:
        _, term_width = os.popen('stty size', 'r').read().split()

    Fix: `shutil.get_terminal_size()`, which asks the terminal when there is one and falls
    back to `COLUMNS`/`LINES` or 80x24 when there is not.
    """

    id = "terminal-size-from-stty"
    point = 2
    severity = Severity.HIGH  # the script dies on import where long runs are launched
    title = "Terminal size from stty without a fallback"
    items: ClassVar[tuple[str, ...]] = ("2.2",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    triggers = Triggers(("stty",))

    def applies(self, ctx: ModuleContext) -> bool:
        return "stty" in ctx.source

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if ctx.flow.qualname_of(node) not in _RUNNERS or not _asks_stty_size(node):
            return
        if _guarded(node, ctx):
            return
        ctx.report(
            self,
            ctx.parents.get(node, node),
            "the terminal size comes from `stty size`, which prints nothing where there is no "
            "terminal (nohup, a batch job, an IDE, CI, Windows): the script then dies with "
            "ValueError before training; `shutil.get_terminal_size()` falls back to 80x24",
        )


def _asks_stty_size(call: ast.Call) -> bool:
    """The command is `stty size`, as one string or an argument list."""
    if not call.args:
        return False
    command = call.args[0]
    if isinstance(command, ast.Constant) and isinstance(command.value, str):
        return command.value.split() == ["stty", "size"]
    if isinstance(command, ast.List | ast.Tuple):
        words = [e.value for e in command.elts if isinstance(e, ast.Constant)]
        return words == ["stty", "size"]
    return False


def _guarded(call: ast.Call, ctx: ModuleContext) -> bool:
    """Something copes with an empty answer: a `try` whose handlers catch ValueError (or
    everything), an `isatty()` test around it, or an `or` giving a default."""
    child: ast.AST = call
    parent = ctx.parents.get(call)
    while parent is not None:
        if isinstance(parent, ast.BoolOp) and isinstance(parent.op, ast.Or):
            return True
        if (
            isinstance(parent, ast.Try | ast.TryStar)
            and child in parent.body
            and any(_catches_value_error(h) for h in parent.handlers)
        ):
            return True
        if isinstance(parent, ast.If | ast.IfExp) and "isatty" in ast.unparse(parent.test):
            return True
        if isinstance(parent, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return False
        child, parent = parent, ctx.parents.get(parent)
    return False


def _catches_value_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(k, ast.Name) and k.id in _CAUGHT for k in kinds)
