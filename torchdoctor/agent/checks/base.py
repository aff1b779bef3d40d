"""The contract every native rule follows, and the per-module context rules read from.

A rule subscribes to AST node types; the engine walks each module once and calls
`visit(node, ctx)` on every subscribed rule, then `finish(ctx)`. Rules report through
`ctx.report(...)`. Analyses that need the whole module (name bindings, training loops,
data-flow) are computed lazily on the context, so a module pays only for what its rules ask.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

if TYPE_CHECKING:
    from torchdoctor.agent.checks.analysis.callgraph import CallGraph
    from torchdoctor.agent.checks.dataflow import DataFlow
    from torchdoctor.agent.checks.loops import LoopAnalysis


class SourceSite(BaseModel):
    """A place in a module's source, with the text a finding placed there shows."""

    model_config = ConfigDict(extra="forbid")

    line: int
    end_line: int
    column: int = 1
    code: str
    excerpt: str


class RawFinding(BaseModel):
    """A rule's report before a reasoner turns it into a `Finding`."""

    model_config = ConfigDict(extra="forbid")

    rule: str
    file: str
    line: int
    end_line: int
    column: int = 1
    code: str
    message: str
    severity: Severity
    excerpt: str
    data: dict[str, Any] = {}


def related_place(finding: RawFinding, message: str) -> dict[str, Any]:
    """`finding`'s place as a related location of another (`data["related"]`)."""
    return {
        "file": finding.file,
        "line": finding.line,
        "end_line": finding.end_line,
        "message": message,
        "excerpt": finding.excerpt,
    }


@dataclass(frozen=True)
class EngineConfig:
    """What the user selected, and the project facts every module's rules share (read from
    its manifests); picklable so worker processes get the same view."""

    select: frozenset[str] = frozenset()
    ignore: frozenset[str] = frozenset()
    target_torch: tuple[int, int] | None = None
    file_deadline_s: float = 10.0
    torch_floor: tuple[int, int] | None = None  # the oldest torch the project's manifests allow


class ImportTable:
    """Local names bound by imports -> the qualified name they stand for."""

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}
        self.star_imported = False
        """`from model import *`: it may bring the model file's `nn`, `F`."""

    def add(self, node: ast.Import | ast.ImportFrom) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    self.aliases[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    self.aliases[top] = top
        elif node.module and node.level == 0:
            for alias in node.names:
                if alias.name != "*":
                    self.aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                else:
                    self.star_imported = True

    def resolve(self, node: ast.AST) -> str | None:
        """`F.softmax` -> `torch.nn.functional.softmax` when `F` came from an import."""
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        base = self.aliases.get(node.id)
        if base is None and self.star_imported:
            base = _CONVENTIONAL.get(node.id)  # the model file's `import torch.nn as nn`
        if base is None:
            return None
        return ".".join([base, *reversed(parts)])


# The aliases every PyTorch file binds the same way, which a star import (`from model import
# *`) brings along from the file that imported them.
_CONVENTIONAL = {
    "torch": "torch",
    "nn": "torch.nn",
    "F": "torch.nn.functional",
    "optim": "torch.optim",
}


def numbered_excerpt(lines: Sequence[str], line: int, end_line: int, context: int = 2) -> str:
    """Numbered lines around `line..end_line` (marked with '>'), for any text file."""
    first = max(1, line - context)
    last = min(len(lines), end_line + context)
    width = len(str(last))
    return "\n".join(
        f"{'>' if line <= n <= end_line else ' '} {n:>{width}} | {lines[n - 1]}"
        for n in range(first, last + 1)
    )


@dataclass
class ModuleContext:
    """Everything a rule may read about one module, plus the sink it reports into."""

    path: str
    source: str
    tree: ast.Module
    config: EngineConfig = field(default_factory=EngineConfig)
    imports: ImportTable = field(default_factory=ImportTable)
    parents: dict[ast.AST, ast.AST] = field(default_factory=dict)
    by_type: dict[type[ast.AST], list[ast.AST]] = field(default_factory=dict)
    findings: list[RawFinding] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)
    memo: dict[str, dict[Any, Any]] = field(default_factory=dict)

    def memo_table(self, key: str) -> dict[Any, Any]:
        """A memo table that lives exactly as long as this module's analysis (shared by rules)."""
        table = self.memo.get(key)
        if table is None:
            table = self.memo[key] = {}
        return table

    @cached_property
    def lines(self) -> list[str]:
        return self.source.splitlines()

    @cached_property
    def loops(self) -> LoopAnalysis:
        from torchdoctor.agent.checks.loops import LoopAnalysis

        return LoopAnalysis(self)

    @cached_property
    def flow(self) -> DataFlow:
        from torchdoctor.agent.checks.dataflow import DataFlow

        return DataFlow(self)

    @cached_property
    def test_module(self) -> bool:
        """Whether this module is a test suite's (by its path, and for a file named like a test
        outside a `tests/` folder, by what a test runner would collect in it):
        `smoke_tests.is_test_file`."""
        from torchdoctor.agent.checks.smoke_tests import is_test_file

        return is_test_file(self.path, self.tree)

    @cached_property
    def calls(self) -> CallGraph:
        from torchdoctor.agent.checks.analysis.callgraph import CallGraph

        return CallGraph(self)

    def nodes_by_type(self) -> dict[type[ast.AST], list[ast.AST]]:
        """Every node grouped by exact type, in the parent map's order; the engine's walk fills
        it, and a context built without the walk gets it from the parent map (or the tree)."""
        if not self.by_type:
            for node in self.parents or ast.walk(self.tree):
                self.by_type.setdefault(type(node), []).append(node)
        return self.by_type

    def qualname(self, node: ast.AST) -> str | None:
        return self.imports.resolve(node)

    def call_qualname(self, call: ast.Call) -> str | None:
        return self.imports.resolve(call.func)

    def ancestors(self, node: ast.AST) -> Iterable[ast.AST]:
        current = self.parents.get(node)
        while current is not None:
            yield current
            current = self.parents.get(current)

    def enclosing_function(self, node: ast.AST) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
        """The innermost function around `node`; every node passed on the way up remembers
        the answer (rules ask it of thousands of nodes that share their ancestors)."""
        memo = self.memo_table("base.enclosing_function")
        passed: list[ast.AST] = []
        current = self.parents.get(node)
        found: ast.FunctionDef | ast.AsyncFunctionDef | None = None
        while current is not None:
            if isinstance(current, ast.FunctionDef | ast.AsyncFunctionDef):
                found = current
                break
            if id(current) in memo:
                found = memo[id(current)]
                break
            passed.append(current)
            current = self.parents.get(current)
        for seen in passed:
            memo[id(seen)] = found
        return found

    def enclosing_class(self, node: ast.AST) -> ast.ClassDef | None:
        """The innermost class around `node`, through the functions between (a closure in a
        method sees the method's `self`); remembered per innermost function."""
        memo = self.memo_table("base.enclosing_class")
        holder = self.enclosing_function(node) or node
        key = id(holder)
        if key not in memo:
            memo[key] = next(
                (a for a in self.ancestors(holder) if isinstance(a, ast.ClassDef)), None
            )
        found: ast.ClassDef | None = memo[key]
        return found

    def segment(self, node: ast.AST) -> str:
        start = getattr(node, "lineno", 1)
        end = getattr(node, "end_lineno", start) or start
        return "\n".join(self.lines[start - 1 : end])

    def excerpt(self, line: int, end_line: int, context: int = 2) -> str:
        """Numbered lines around a location: just enough to act on."""
        return numbered_excerpt(self.lines, line, end_line, context)

    def suppressed(self, rule_id: str, line: int) -> bool:
        from torchdoctor.agent.checks.catalogue import suppressed_inline

        text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        return suppressed_inline(text, rule_id)

    def report(
        self,
        rule: Rule,
        node: ast.AST,
        message: str,
        *,
        severity: Severity | None = None,
        data: dict[str, Any] | None = None,
        header_only: bool = False,
    ) -> None:
        """Record a finding at `node` (only its first line when `header_only`, e.g. a loop)."""
        found = self.finding(
            rule, node, message, severity=severity, data=data, header_only=header_only
        )
        if found is not None:
            self.findings.append(found)

    def finding(
        self,
        rule: Rule,
        node: ast.AST,
        message: str,
        *,
        severity: Severity | None = None,
        data: dict[str, Any] | None = None,
        header_only: bool = False,
    ) -> RawFinding | None:
        """The finding `report` would record (None when suppressed), for the project pass to
        confirm when it depends on another file."""
        if self.suppressed(rule.id, getattr(node, "lineno", 1)):
            return None
        return RawFinding(
            rule=rule.id,
            file=self.path,
            **self.site(node, header_only=header_only).model_dump(),
            message=message,
            severity=severity or rule.severity,
            data=data or {},
        )

    def site(self, node: ast.AST, *, header_only: bool = False) -> SourceSite:
        """Where `node` is, with its code and the numbered lines around it."""
        line = getattr(node, "lineno", 1)
        end_line = line if header_only else (getattr(node, "end_lineno", line) or line)
        return SourceSite(
            line=line,
            end_line=end_line,
            column=getattr(node, "col_offset", 0) + 1,
            code="\n".join(self.lines[line - 1 : end_line]),
            excerpt=self.excerpt(line, min(end_line, line + 6)),
        )


class Rule:
    """Base of every native rule. Its docstring is its documentation (what, why, example, fix).

    Subclasses set the class attributes and override `visit` and/or `finish`. Project-wide
    rules also record picklable `ctx.facts[...]` and override `check_project`.
    """

    id: ClassVar[str]
    point: ClassVar[int]
    severity: ClassVar[Severity]
    title: ClassVar[str]
    items: ClassVar[tuple[str, ...]]
    node_types: ClassVar[tuple[type[ast.AST], ...]] = ()
    triggers: ClassVar[Triggers] = Triggers()
    """Text a module must hold for this rule to do anything there: report, publish a fact,
    or apply (a rule that overrides `applies` answers False without it). Without it, the
    engine skips the rule in that module altogether: no visit, no `finish`, no analysis
    built for it; a rule that keeps the default `applies` stays applicable there, since it
    would have checked and found nothing. Empty: the rule runs on every module."""
    call_names: ClassVar[frozenset[str]] = frozenset()
    """For a rule subscribed to `ast.Call`: the callee names its visit can act on (the last
    part: 'save' for `torch.save(...)` and `save(...)`). When set, the engine sends the rule
    only calls of those names, so each call costs the rules that may care about it."""
    tier: ClassVar[Literal["default", "opt-in"]] = "default"
    unchecked_when_absent: ClassVar[str] = ""
    """Set when finding nothing to apply to means the item went unchecked, not that it does
    not apply (e.g. no test file at all): the reason coverage gives."""
    severity_note: ClassVar[str] = ""
    """When the severity differs from `severity`, and why (shown by `torchdoctor rules ID`)."""
    reads_manifests: ClassVar[bool] = False

    @classmethod
    def applies_everywhere(cls) -> bool:
        """Whether the rule keeps the default `applies`: applicable in every module."""
        return cls.applies is Rule.applies

    def applies(self, ctx: ModuleContext) -> bool:
        """Whether the module has what this rule checks (drives 'not applicable' coverage)."""
        return True

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        """Called for every node of a type in `node_types`, in source order."""

    def finish(self, ctx: ModuleContext) -> None:
        """Called once after the walk, for rules that reason over the whole module."""

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        """Project-wide pass over every module's facts (path -> facts); default: nothing."""
        return []

    @classmethod
    def document_facts(cls, documents: Mapping[str, str]) -> dict[str, dict[str, Any]]:
        """Facts (path -> facts) this rule takes from the project's README or model card, for
        its project pass; default: none."""
        return {}

    @classmethod
    def check_manifests(cls, manifests: Mapping[str, str]) -> list[RawFinding]:
        """Project-level pass over dependency manifests (relative path -> text); default: nothing.

        Rules that override it set `reads_manifests = True` so coverage counts them as applied.
        """
        return []
