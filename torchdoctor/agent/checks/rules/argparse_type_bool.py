"""argparse-type-bool: a command-line option parsed with `type=bool`."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import kwarg
from torchdoctor.agent.models import Severity


class ArgparseTypeBool(Rule):
    """Detects `parser.add_argument(..., type=bool)` (argparse, or a parser made from it):
    the option's string is handed to `bool()`.

    Why it matters: `bool("False")`, `bool("0")` and `bool("no")` are all True: only an empty
    string gives False. `--use_gpu False` runs on the GPU, `--use_adv_norm False` still
    normalises the advantages, and an ablation that turns a trick off from the command line
    silently trains the default model, so its results describe a run that never happened.

    Not reported: `type=str2bool` or any other converter; `action="store_true"` /
    `"store_false"` / `argparse.BooleanOptionalAction`; `type=bool` passed to a call that is
    not `add_argument` (a dataclass field, a config schema).

    Example:
        parser.add_argument("--use_adv_norm", type=bool, default=True)

    Fix: `action=argparse.BooleanOptionalAction` (`--use_adv_norm` / `--no-use_adv_norm`),
    or `action="store_true"` for an option off by default.
    """

    id = "argparse-type-bool"
    point = 9
    severity = Severity.MEDIUM
    title = "Command-line option parsed with type=bool"
    items: ClassVar[tuple[str, ...]] = ("9.3",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    triggers = Triggers(("add_argument",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        func = node.func
        if not (isinstance(func, ast.Attribute) and func.attr == "add_argument"):
            return
        converter = kwarg(node, "type")
        if not (isinstance(converter, ast.Name) and converter.id == "bool"):
            return
        if "bool" in ctx.flow.functions or "bool" in ctx.imports.aliases:
            return  # the module defines or imports its own `bool`
        names = [a.value for a in node.args if isinstance(a, ast.Constant)]
        option = next((n for n in names if isinstance(n, str)), "the option")
        ctx.report(
            self,
            node,
            f"`{option}` is parsed with type=bool: bool() of any non-empty string is True, so "
            f"`{option} False` (or 0) turns it on; use action=argparse.BooleanOptionalAction "
            "or action='store_true'",
            data={"option": option},
        )
