"""flag-store-false-inverted: a command-line flag that turns off what its name turns on."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import kwarg
from torchdoctor.agent.models import Severity

_NEGATIONS = frozenset(
    {
        "no", "not", "dont", "disable", "disabled", "without", "skip", "off", "omit",
        "exclude", "ignore", "never", "avoid", "remove", "drop", "hide", "suppress", "non",
    }
)  # fmt: skip
"""Words of an option's name that say passing it turns something off (`--no_pin_mem`)."""
_SAYS_OFF = re.compile(
    r"\b(not?|disables?|disabling|don'?t|without|skips?|turns? off|off|never|avoids?)\b"
    r"|default\W{0,3}true|on by default|by default",
    re.IGNORECASE,
)
"""Help text that says the flag turns something off ("using this argument means not using
distilling", "do not smooth alpha overlay"), or that the option is on unless it is given
("use CUDA (default: True)")."""


class FlagStoreFalseInverted(Rule):
    """Detects `parser.add_argument("--name", action="store_false")` where the option's name
    says it turns something on: `name` holds no negation (`no`, `disable`, `skip`...), no
    `dest=` renames it, and its help text, if any, does not say that the flag turns it off.

    Why it matters: `store_false` makes the option default to True and passing the flag
    sets it to False. `--multiscale_training` (help "Allow for multi-scale training") thus
    trained at multiple scales unless the flag was given, and giving it, to turn multi-scale
    training on, turned it off: eriklindernoren/PyTorch-YOLOv3 fixed exactly this
    (`f1f61c9`). `--cuda` with `store_false` runs on the CPU when asked for CUDA.

    Not reported: a negated name (`--no_pin_mem`, `--disable-amp`, `--skip_eval`); a `dest=`
    other than the name (`--preserve-case` stored as `lower`: the author chose the inversion);
    help text that says the flag turns it off ("using this argument means not using ...") or
    that the option is on by default ("use CUDA (default: True)");
    `store_true` and `BooleanOptionalAction`.

    Example:
        parser.add_argument("--multiscale_training", action="store_false",
                            help="Allow for multi-scale training")

    Fix: `action="store_true"` when the option should be off unless asked for; to keep it on
    by default, `action=argparse.BooleanOptionalAction, default=True` (`--name` /
    `--no-name`), or rename the flag `--no-name` with `dest="name"`.
    """

    id = "flag-store-false-inverted"
    point = 9
    severity = Severity.MEDIUM
    title = "Command-line flag turns off what it names"
    items: ClassVar[tuple[str, ...]] = ("9.3",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset({"add_argument"})
    triggers = Triggers(("store_false",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if not isinstance(node.func, ast.Attribute) or node.func.attr != "add_argument":
            return
        action = kwarg(node, "action")
        if not (isinstance(action, ast.Constant) and action.value == "store_false"):
            return
        options = [a.value for a in node.args if isinstance(a, ast.Constant)]
        flags = [o for o in options if isinstance(o, str) and o.startswith("-")]
        if not flags or len(flags) != len(node.args):
            return
        option = max(flags, key=len)
        name = option.lstrip("-").replace("-", "_")
        if _NEGATIONS & set(name.lower().split("_")):
            return
        dest = kwarg(node, "dest")
        if dest is not None and not (isinstance(dest, ast.Constant) and dest.value == name):
            return
        helped = kwarg(node, "help")
        said = helped.value if isinstance(helped, ast.Constant) else ""
        if helped is not None and (not isinstance(said, str) or _SAYS_OFF.search(said)):
            return
        also = f" (help: {said!r})" if said else ""
        ctx.report(
            self,
            node,
            f"`{option}` uses action='store_false': `{name}` is True unless the flag is "
            f"given, and giving it turns `{name}` off, the opposite of what its name{also} "
            "says; use action='store_true' (off unless asked for), or "
            "argparse.BooleanOptionalAction with default=True (`--no-...` to turn it off)",
            data={"option": option},
        )
