"""Static evidence for the architecture items 9.5 and 10.2, as low-severity advice: a function
that trains, evaluates, does I/O and plots at once (10.2, single responsibility), and an
if/elif chain that picks an implementation by name where a registry or factory would pay
(9.5). Each is a finding with its place; 10.2 passes, saying so, when no function mixes."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator

from torchdoctor import __version__
from torchdoctor.agent.models import Evidence
from torchdoctor.agent.workspace import Workspace

SOURCE = "torchdoctor-architecture"
MIXED = "mixed-responsibilities"
DISPATCH = "string-dispatch-chain"
_KINDS: dict[str, re.Pattern[str]] = {
    "training": re.compile(r"\.backward\(|\boptimi[sz]er\w*\.step\(|\.zero_grad\("),
    # doing it, not delegating it: `acc = evaluate(model)` is the evaluation's own function
    "evaluation": re.compile(r"\.eval\(\)|\bno_grad\(|\binference_mode\(|_score\("),
    "I/O": re.compile(
        r"\bopen\(|torch\.save\(|torch\.load\(|read_csv\(|to_csv\(|json\.dump|np\.save\("
    ),
    "plotting": re.compile(r"\bplt\.|matplotlib|seaborn|\bsns\.|savefig\(|\.plot\("),
}
_MIN_KINDS = 3
_MIN_BRANCHES = 3


def architecture_evidence(workspace: Workspace) -> list[tuple[int, Evidence]]:
    found: list[tuple[int, Evidence]] = []
    mixed = chains = files = 0
    for path, tree, lines in _parsed(workspace):
        files += 1
        for function in _functions(tree):
            text = "\n".join(lines[function.lineno - 1 : function.end_lineno])
            kinds = [kind for kind, words in _KINDS.items() if words.search(text)]
            if len(kinds) >= _MIN_KINDS:
                mixed += 1
                found.append(
                    (10, _finding(path, function, lines, MIXED, _mixed_title(function, kinds)))
                )
        for chain, subject in _dispatch_chains(tree):
            title = (
                f"an if/elif chain of {_branches(chain)} branches picks an implementation by "
                f"comparing {subject} with names: a registry or factory would pay"
            )
            chains += 1
            found.append((9, _finding(path, chain, lines, DISPATCH, title, item="9.5")))
    if not mixed and workspace.files:
        found.append(
            (
                10,
                Evidence(
                    source=SOURCE,
                    source_version=__version__,
                    kind="static",
                    message="no function does three or more of training, evaluation, I/O and "
                    "plotting",
                    data={"items": ["10.2"], "verdict": "pass"},
                ),
            )
        )
    if not chains and files:
        found.append((9, _no_dispatch(files)))
    return found


def _no_dispatch(files: int) -> Evidence:
    """9.5 without a chain: what was looked for, and that the rest is a reviewer's call."""
    return Evidence(
        source=SOURCE,
        source_version=__version__,
        kind="static",
        message=f"no if/elif chain in the {files} Python file(s) picks an implementation by "
        "comparing a name with strings; whether a strategy or factory would pay elsewhere "
        "needs a reviewer's judgement (configure an LLM or review by hand)",
        data={"items": ["9.5"], "verdict": "not-checked"},
    )


def _mixed_title(function: ast.FunctionDef | ast.AsyncFunctionDef, kinds: list[str]) -> str:
    return f"{function.name}() does {', '.join(kinds)} at once: split it so each can be tested"


def _finding(
    path: str,
    node: ast.stmt,
    lines: list[str],
    rule: str,
    title: str,
    item: str = "10.2",
) -> Evidence:
    code = lines[node.lineno - 1] if node.lineno <= len(lines) else ""
    return Evidence(
        source=SOURCE,
        source_version=__version__,
        kind="static",
        message=title,
        file=path,
        line=node.lineno,
        excerpt=f"{node.lineno:>5} | {code}",
        data={
            "items": [item],
            "finding": {
                "rule": rule,
                "severity": "low",
                "title": title,
                "line": node.lineno,
                "code": code,
            },
        },
    )


def _parsed(workspace: Workspace) -> Iterator[tuple[str, ast.Module, list[str]]]:
    for source in workspace.files:
        if not source.path.endswith(".py"):
            continue
        try:
            yield source.path, ast.parse(source.text), source.text.splitlines()
        except (SyntaxError, ValueError, RecursionError):
            continue


def _functions(tree: ast.Module) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def _dispatch_chains(tree: ast.Module) -> Iterator[tuple[ast.If, str]]:
    """Top of each chain `if X == "a": ... elif X == "b": ... elif X == "c": ...` whose
    branches each build something."""
    inner: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.If) or id(node) in inner:
            continue
        subjects: list[str] = []
        current: ast.If | None = node
        while current is not None:
            subject = _compared_name(current.test)
            if subject is None or not _builds(current.body):
                break
            subjects.append(subject)
            nested = current.orelse
            current = nested[0] if len(nested) == 1 and isinstance(nested[0], ast.If) else None
            if current is not None:
                inner.add(id(current))
        if len(subjects) >= _MIN_BRANCHES and len(set(subjects)) == 1:
            yield node, subjects[0]


def _branches(chain: ast.If) -> int:
    count, current = 1, chain
    while len(current.orelse) == 1 and isinstance(current.orelse[0], ast.If):
        count, current = count + 1, current.orelse[0]
    return count


def _compared_name(test: ast.expr) -> str | None:
    if (
        isinstance(test, ast.Compare)
        and len(test.ops) == 1
        and isinstance(test.ops[0], ast.Eq)
        and isinstance(test.comparators[0], ast.Constant)
        and isinstance(test.comparators[0].value, str)
    ):
        return ast.unparse(test.left)
    return None


def _builds(body: list[ast.stmt]) -> bool:
    return any(
        isinstance(stmt, ast.Assign | ast.Return) and isinstance(stmt.value, ast.Call)
        for stmt in body
    )
