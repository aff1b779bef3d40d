"""A deprecated torch call on the fallback branch of a compatibility check.

`if TORCH_GE_1_8_0: torch.linalg.qr(...) else: torch.qr(...)` (performer-pytorch's orthogonal
random features and the code that copies them), `try: torch.linalg.cholesky(a) except
AttributeError: torch.cholesky(a)`, `torch.outer(a, b) if hasattr(torch, "outer") else
torch.ger(a, b)`: the other branch calls the API that replaces the deprecated one, so the
deprecated call runs only on releases without it. Shared by deprecated-torch-api and the veto
of TorchFix's TOR101 on the same call.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable

from torchdoctor.agent.checks.data.torch_api import ApiChange
from torchdoctor.agent.checks.loops import walk_tree

_LEADING_NAME = re.compile(r"[A-Za-z_][\w.]*")
_FIRST_ARGUMENTS = re.compile(r"\(([^)]*)\)")
_QUOTED = re.compile(r"'([^']*)'")
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)


def replacement_of(row: ApiChange) -> tuple[str, frozenset[str]] | None:
    """The replacement's dotted name and the string literals it is called with
    (`torch.amp.autocast('cpu', ...)` -> ('torch.amp.autocast', {'cpu'})): a call with other
    literals (`autocast('cuda')`) does another job, a device branch rather than a fallback."""
    text = row.replacement or ""
    found = _LEADING_NAME.match(text)
    name = found.group(0).rstrip(".") if found else ""
    if not name.startswith("torch."):
        return None
    arguments = _FIRST_ARGUMENTS.match(text[len(name) :])
    return name, frozenset(_QUOTED.findall(arguments.group(1))) if arguments else frozenset()


def string_arguments(call: ast.Call) -> set[str]:
    return {
        a.value
        for a in [*call.args, *(k.value for k in call.keywords)]
        if isinstance(a, ast.Constant) and isinstance(a.value, str)
    }


def on_fallback_branch(
    node: ast.AST,
    parent_of: Callable[[ast.AST], ast.AST | None],
    is_replacement: Callable[[ast.Call], bool],
) -> bool:
    """`node` is on one branch of an `if`, a conditional expression or a `try` and its
    handlers, within its function, whose other branch holds a call `is_replacement` accepts."""
    child, anc = node, parent_of(node)
    while anc is not None and not isinstance(anc, _SCOPES):
        others: list[ast.AST] = []
        if isinstance(anc, ast.If):
            if any(child is s for s in anc.body):
                others = list(anc.orelse)
            elif any(child is s for s in anc.orelse):
                others = list(anc.body)
        elif isinstance(anc, ast.IfExp) and child is not anc.test:
            others = [anc.orelse if child is anc.body else anc.body]
        elif isinstance(anc, ast.Try):
            if any(child is s for s in anc.body):
                others = [stmt for handler in anc.handlers for stmt in handler.body]
            elif any(child is h for h in anc.handlers):
                others = list(anc.body)
        if any(
            isinstance(n, ast.Call) and is_replacement(n)
            for other in others
            for n in walk_tree(other)
        ):
            return True
        child, anc = anc, parent_of(anc)
    return False
