"""The native static pass: parse each file once, walk it once, dispatch nodes to rules by type.

Folders use every core (a process pool); a per-file deadline keeps a pathological file from
stalling the audit, and no error in one file stops the others.
"""

from __future__ import annotations

import ast
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agent.checks.base import EngineConfig, ModuleContext, RawFinding, Rule
from agent.checks.registry import enabled_rules
from agent.checks.rules.syntax_error import SyntaxErrorRule

PARALLEL_THRESHOLD = 24
_DEADLINE_CHECK_EVERY = 4096


class FileResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str
    findings: list[RawFinding] = Field(default_factory=list)
    facts: dict[str, Any] = Field(default_factory=dict)
    applicable: list[str] = Field(default_factory=list)
    note: str | None = None
    seconds: float = 0.0


class StaticResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    files: list[FileResult]
    project_findings: list[RawFinding] = Field(default_factory=list)
    project_applicable: list[str] = Field(default_factory=list)
    rules_run: list[str]
    seconds: float

    def all_findings(self) -> list[RawFinding]:
        found = [f for result in self.files for f in result.findings]
        return found + self.project_findings

    def applicable_rules(self) -> set[str]:
        per_file = {rule for result in self.files for rule in result.applicable}
        return per_file | set(self.project_applicable)


class _DeadlineExceeded(Exception):
    pass


def _walk(
    ctx: ModuleContext, dispatch: dict[type, list[Callable[..., None]]], deadline: float
) -> None:
    """One pre-order walk in source order: records parents, imports, and dispatches nodes."""
    stack: list[ast.AST] = [ctx.tree]
    parents = ctx.parents
    count = 0
    while stack:
        node = stack.pop()
        count += 1
        if count % _DEADLINE_CHECK_EVERY == 0 and time.perf_counter() > deadline:
            raise _DeadlineExceeded
        if isinstance(node, ast.Import | ast.ImportFrom):
            ctx.imports.add(node)
        for visit in dispatch.get(type(node), ()):
            visit(node, ctx)
        children = list(ast.iter_child_nodes(node))
        for child in children:
            parents[child] = node
        stack.extend(reversed(children))


def analyse_source(
    path: str, source: str, rule_types: Sequence[type[Rule]], config: EngineConfig
) -> FileResult:
    started = time.perf_counter()
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as err:
        finding = SyntaxErrorRule.finding(path, source, err)
        return FileResult(path=path, findings=[finding], applicable=[SyntaxErrorRule.id])
    except (ValueError, RecursionError, MemoryError) as err:
        return FileResult(path=path, note=f"could not be parsed: {type(err).__name__}: {err}")
    ctx = ModuleContext(path=path, source=source, tree=tree, config=config)
    rules = [rule_type() for rule_type in rule_types]
    dispatch: dict[type, list[Callable[..., None]]] = {}
    for rule in rules:
        for node_type in rule.node_types:
            dispatch.setdefault(node_type, []).append(rule.visit)
    note = None
    applicable: list[str] = [SyntaxErrorRule.id]
    try:
        _walk(ctx, dispatch, started + config.file_deadline_s)
        for rule in rules:
            rule.finish(ctx)
            if rule.id != SyntaxErrorRule.id and rule.applies(ctx):
                applicable.append(rule.id)
    except _DeadlineExceeded:
        note = f"analysis stopped after the {config.file_deadline_s:g}s per-file deadline"
    except RecursionError:
        note = "analysis stopped: the file nests too deeply to analyse"
    return FileResult(
        path=path,
        findings=ctx.findings,
        facts=ctx.facts,
        applicable=applicable,
        note=note,
        seconds=time.perf_counter() - started,
    )


def _analyse_chunk(args: tuple[list[tuple[str, str]], EngineConfig]) -> list[FileResult]:
    files, config = args
    rule_types = enabled_rules(config.select, config.ignore)
    return [analyse_source(path, source, rule_types, config) for path, source in files]


def analyse_files(
    files: Sequence[tuple[str, str]],
    config: EngineConfig | None = None,
    workers: int | None = None,
    manifests: Mapping[str, str] | None = None,
) -> StaticResult:
    """Run every enabled rule over `(relative path, text)` pairs, in parallel for many files.

    `manifests` (relative path -> text of requirements*.txt, pyproject.toml, ...) feeds the
    rules that read dependency manifests.
    """
    config = config or EngineConfig()
    started = time.perf_counter()
    rule_types = enabled_rules(config.select, config.ignore)
    workers = workers or os.cpu_count() or 1
    if len(files) < PARALLEL_THRESHOLD or workers == 1:
        results = [analyse_source(path, text, rule_types, config) for path, text in files]
    else:
        chunks = _balanced_chunks(list(files), workers * 8)
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("forkserver")) as pool:
            results = [
                r
                for chunk in pool.map(_analyse_chunk, [(c, config) for c in chunks])
                for r in chunk
            ]
    facts_by_file = {r.path: r.facts for r in results if r.facts}
    project_findings: list[RawFinding] = []
    project_applicable: list[str] = []
    for rule_type in rule_types:
        project_findings.extend(rule_type.check_project(facts_by_file))
        if manifests and rule_type.reads_manifests:
            project_findings.extend(rule_type.check_manifests(manifests))
            project_applicable.append(rule_type.id)
    return StaticResult(
        files=sorted(results, key=lambda r: r.path),
        project_findings=project_findings,
        project_applicable=project_applicable,
        rules_run=[r.id for r in rule_types],
        seconds=time.perf_counter() - started,
    )


def _balanced_chunks(files: list[tuple[str, str]], count: int) -> list[list[tuple[str, str]]]:
    """Spread files by size so no worker gets all the big ones."""
    ordered = sorted(files, key=lambda f: len(f[1]), reverse=True)
    chunks: list[list[tuple[str, str]]] = [[] for _ in range(max(1, min(count, len(ordered))))]
    for index, item in enumerate(ordered):
        chunks[index % len(chunks)].append(item)
    return chunks
