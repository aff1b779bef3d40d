"""terminal-size-from-stty: `os.popen('stty size', 'r').read().split()` ->
`[str(size) for size in reversed(shutil.get_terminal_size())]`."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext, method_call
from torchdoctor.agent.fixes.models import FixKind, FixTarget

_SIZES = "[str(size) for size in reversed({shutil}.get_terminal_size())]"


class TerminalSizeFromSttyFix(Codemod):
    """Asks Python for the terminal size: the same two strings, rows then columns, where there
    is a terminal, and COLUMNS/LINES or 80x24 where there is none, so the script starts under
    nohup, a batch job or an IDE. Only the `os.popen(...).read().split()` chain is rewritten:
    `subprocess.check_output` gives bytes, which a program may decode or compare as such."""

    rule = "terminal-size-from-stty"
    kind = FixKind.CORRECTNESS
    summary = "read the terminal size with shutil.get_terminal_size()"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        for call in ctx.find(cst.Call, within=(target.line, target.end_line)):
            if ctx.qualname(call.func) != "os.popen" or not _asks_stty_size(call):
                continue
            read = _method_on(ctx, call, "read")
            answer = _method_on(ctx, read, "strip") if read is not None else None
            split = _method_on(ctx, answer or read, "split") if read is not None else None
            if split is None or split.args:
                return ctx.decline(
                    "only `os.popen('stty size').read().split()` is rewritten: this reads "
                    "the answer another way, which `shutil.get_terminal_size()` may not match"
                )
            shutil = ctx.require_module("shutil")
            ctx.substitute(split, cst.parse_expression(_SIZES.format(shutil=shutil)))
            return True
        return False


def _asks_stty_size(call: cst.Call) -> bool:
    if not call.args or not isinstance(call.args[0].value, cst.SimpleString):
        return False
    return str(call.args[0].value.evaluated_value).split() == ["stty", "size"]


def _method_on(ctx: SourceContext, value: cst.CSTNode | None, name: str) -> cst.Call | None:
    """The call `value.name(...)`, when `value` is the receiver of one."""
    attribute = ctx.parent(value) if value is not None else None
    if not isinstance(attribute, cst.Attribute) or attribute.attr.value != name:
        return None
    return method_call(ctx.parent(attribute) or attribute, name)
