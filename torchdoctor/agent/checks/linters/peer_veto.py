"""Peer findings that torchdoctor's own reading of the code rules out.

A peer linter sees one call at a time; torchdoctor reads the code around it. Three cases are
decided here, each from the flagged line's syntax tree:

- TorchFix TOR401 ("DataLoader running synchronously") on a call that passes `**kwargs`:
  `num_workers` may be (and in mature code usually is) inside the unpacked dict, which
  TorchFix cannot see.
- bandit B311 ("random is not for cryptography") where nothing in the statement or the
  enclosing function names a secret, token, password, key, salt or nonce: in training code,
  `random` samples data, crops and flips.
- bandit B614 / TorchFix TOR102 (`torch.load` without `weights_only`) inside
  `with torch.serialization.safe_globals([...])` and without `weights_only=False`: the
  allowlist exists only for the weights-only unpickler, so the load is weights-only.

A ruled-out finding is kept as context for the reasoner, with the reason; it is no finding.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator

from torchdoctor.agent.checks.safe_globals import within_safe_globals
from torchdoctor.agent.models import Evidence

_SECURITY_WORDS = re.compile(
    r"secret|token|passw|passwd|salt|nonce|otp|csrf|session|api_?key|private|crypt|auth",
    re.IGNORECASE,
)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)


class PeerVeto:
    """Decides, per peer finding, whether the code rules it out; parses each file once."""

    def __init__(self, text_of: Callable[[str], str | None]) -> None:
        self._text_of = text_of
        self._trees: dict[str, tuple[ast.Module, dict[ast.AST, ast.AST]] | None] = {}

    def reason(self, evidence: Evidence) -> str | None:
        """Why this peer finding is wrong here, or None when nothing rules it out."""
        if evidence.file is None or evidence.line is None:
            return None
        code = str(evidence.data.get("code", ""))
        check = _CHECKS.get((evidence.source, code))
        if check is None:
            return None
        parsed = self._parsed(evidence.file)
        if parsed is None:
            return None
        tree, parents = parsed
        return check(_nodes_on_line(tree, evidence.line), parents)

    def _parsed(self, file: str) -> tuple[ast.Module, dict[ast.AST, ast.AST]] | None:
        if file not in self._trees:
            text = self._text_of(file)
            try:
                tree = ast.parse(text) if text is not None else None
            except (SyntaxError, ValueError, RecursionError):
                tree = None
            if tree is None:
                self._trees[file] = None
            else:
                parents = {
                    child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)
                }
                self._trees[file] = (tree, parents)
        return self._trees[file]


def _nodes_on_line(tree: ast.Module, line: int) -> Iterator[ast.AST]:
    for node in ast.walk(tree):
        start = getattr(node, "lineno", None)
        end = getattr(node, "end_lineno", None)
        if start is not None and start <= line <= (end or start):
            yield node


def _calls_named(nodes: Iterator[ast.AST], name: str) -> list[ast.Call]:
    return [node for node in nodes if isinstance(node, ast.Call) and _terminal(node.func) == name]


def _terminal(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return ""


def _loader_with_star_kwargs(nodes: Iterator[ast.AST], _: dict[ast.AST, ast.AST]) -> str | None:
    for call in _calls_named(nodes, "DataLoader"):
        if any(keyword.arg is None for keyword in call.keywords):
            return (
                "the DataLoader receives **kwargs: num_workers may be set inside the unpacked "
                "dict, which TorchFix cannot see"
            )
    return None


def _random_not_for_security(
    nodes: Iterator[ast.AST], parents: dict[ast.AST, ast.AST]
) -> str | None:
    found = list(nodes)
    statement = next((n for n in found if isinstance(n, ast.stmt)), None)
    if statement is None:
        return None
    scope: ast.AST | None = statement
    while scope is not None and not isinstance(scope, _SCOPES):
        scope = parents.get(scope)
    words = ast.unparse(statement)
    if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        words += " " + scope.name
    if _SECURITY_WORDS.search(words):
        return None
    return "random draws data samples or augmentations here; nothing names a secret or token"


def _load_inside_safe_globals(
    nodes: Iterator[ast.AST], parents: dict[ast.AST, ast.AST]
) -> str | None:
    for call in _calls_named(nodes, "load"):
        weights_only = next((k.value for k in call.keywords if k.arg == "weights_only"), None)
        if isinstance(weights_only, ast.Constant) and weights_only.value is False:
            continue
        if within_safe_globals(call, parents):
            return (
                "torch.load runs inside torch.serialization.safe_globals: the allowlist is for "
                "the weights-only unpickler, so this load is weights-only"
            )
    return None


_Check = Callable[[Iterator[ast.AST], dict[ast.AST, ast.AST]], str | None]
_CHECKS: dict[tuple[str, str], _Check] = {
    ("torchfix", "TOR401"): _loader_with_star_kwargs,
    ("bandit", "B311"): _random_not_for_security,
    ("bandit", "B614"): _load_inside_safe_globals,
    ("torchfix", "TOR102"): _load_inside_safe_globals,
}
