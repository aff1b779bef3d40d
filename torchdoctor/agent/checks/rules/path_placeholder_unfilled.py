"""path-placeholder-unfilled: a file path whose `%d` / `{}` placeholder is never filled."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import argument, terminal_name
from torchdoctor.agent.models import Severity

_PRINTF = re.compile(r"%[-#0 +]*\d*(?:\.\d+)?[disfgexXo]")
_FORMAT_FIELD = re.compile(r"\{(?:[A-Za-z_]\w*|\d*)(?:![rsa])?(?::[^{}]*)?\}")
_PATH_ARGUMENT = {
    # callee's last name -> (the path's keyword, its position)
    "load": ("f", 0),
    "save": ("f", 1),
    "open": ("file", 0),
    "save_image": ("fp", 1),
    "imread": ("filename", 0),
    "imwrite": ("filename", 0),
    "read_csv": ("filepath_or_buffer", 0),
    "to_csv": ("path_or_buf", 0),
    "savez": ("file", 0),
    "savetxt": ("fname", 0),
    "loadtxt": ("fname", 0),
    "load_state_dict_from_url": ("url", 0),
    "save_pretrained": ("save_directory", 0),
    "makedirs": ("name", 0),
}
"""Calls whose argument is a file path; `save` takes the object first (`torch.save(obj, f)`,
`np.save(file, arr)` puts the path first: owners decide, see `_path_of`)."""
_PATH_BUILDERS = frozenset({"join", "Path", "str", "PurePath", "abspath", "expanduser"})
"""Calls that build a path from the strings given (`os.path.join`, `Path(...)`): a
placeholder in their arguments is still in the path."""


class PathPlaceholderUnfilled(Rule):
    """Detects a file path passed to a load/save/open call with a `%d`-style or `{}`-style
    placeholder that is never filled: `torch.load("saved_models/generator_%d.pth")`,
    `torch.save(state, os.path.join(out_dir, "epoch_{}.pt"))`.

    Why it matters: the string is used as written, so the placeholder is part of the file
    name. A save writes every checkpoint over one file literally named `epoch_{}.pt`; a load
    looks for a file of that name and fails, or, worse, finds the one the save wrote and
    resumes from the wrong epoch. eriklindernoren/PyTorch-GAN fixed exactly this in ESRGAN's
    resume (`e4701b5`: `"saved_models/generator_%d.pth" % opt.epoch`).

    The path is followed through `os.path.join`, `Path(...)`, `+` and `/`, and through the
    literal parts of an f-string. Not reported: a string formatted with `%` or `.format` on
    the way (the placeholder is filled), `strftime` patterns (`%Y`: no path placeholder),
    a `{}` inside an f-string's field, and strings that are not on the path argument.

    Example:
        generator.load_state_dict(torch.load("saved_models/generator_%d.pth"))

    Fix: fill it: `torch.load("saved_models/generator_%d.pth" % opt.epoch)`, or an f-string
    (`f"saved_models/generator_{opt.epoch}.pth"`).
    """

    id = "path-placeholder-unfilled"
    point = 2
    severity = Severity.HIGH
    title = "File path placeholder never filled"
    items: ClassVar[tuple[str, ...]] = ("2.2",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset(_PATH_ARGUMENT)
    triggers = Triggers(("%", "{}"), all_of=(("{",), ("}",)))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        path = _path_of(node, ctx)
        if path is None:
            return
        for text in _literal_parts(path):
            found = _PRINTF.search(text) or _FORMAT_FIELD.search(text)
            if found is not None:
                ctx.report(
                    self,
                    node,
                    f"The path holds the placeholder `{found.group()}`, but nothing fills it "
                    "(no `%` or `.format` on the way): the file name is used as written, so "
                    "every save goes to one file literally named so and a load looks for it. "
                    "Fill it, e.g. with an f-string.",
                )
                return


def _path_of(call: ast.Call, ctx: ModuleContext) -> ast.expr | None:
    func = call.func
    name = terminal_name(func)
    if name not in _PATH_ARGUMENT:
        return None
    keyword, position = _PATH_ARGUMENT[name]
    if name in ("save", "load"):
        qualified = ctx.qualname(func) or ""
        if qualified.startswith(("numpy.", "np.")):
            position = 0  # `np.save(file, arr)`, `np.load(file)`
        elif qualified not in ("torch.save", "torch.load"):
            return None  # a project's or a model's own save/load: its arguments are its own
    elif (
        name == "open"
        and isinstance(func, ast.Attribute)
        and ctx.qualname(func) not in ("PIL.Image.open", "io.open", "gzip.open", "codecs.open")
    ):
        return None
    return argument(call, keyword, position)


def _literal_parts(path: ast.expr) -> list[str]:
    """The literal strings that end up in the path as written."""
    parts: list[str] = []
    stack = [path]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            parts.append(node.value)
        elif isinstance(node, ast.JoinedStr):
            parts.extend(
                value.value
                for value in node.values
                if isinstance(value, ast.Constant) and isinstance(value.value, str)
            )
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Div):
            stack.extend((node.left, node.right))
        elif isinstance(node, ast.Call) and terminal_name(node.func) in _PATH_BUILDERS:
            stack.extend(node.args)
    return parts
