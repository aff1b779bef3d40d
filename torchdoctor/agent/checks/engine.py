"""The native static pass: parse each file once, walk it once, dispatch nodes to rules by type.

Folders use every core (a process pool); a per-file deadline keeps a pathological file from
stalling the audit, and no error in one file stops the others. The deadline counts this
thread's CPU time, not the wall clock, so a busy machine does not change the findings.
"""

from __future__ import annotations

import ast
import gc
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import replace
from functools import lru_cache
from multiprocessing import get_context
from operator import attrgetter
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from torchdoctor.agent.checks.advice_scope import consolidate
from torchdoctor.agent.checks.base import (
    EngineConfig,
    ModuleContext,
    RawFinding,
    Rule,
)
from torchdoctor.agent.checks.device_scope import stand_down
from torchdoctor.agent.checks.legacy_source import as_python3
from torchdoctor.agent.checks.loops import node_fields, scope_memo
from torchdoctor.agent.checks.manifests import declared_floor, parse_manifests
from torchdoctor.agent.checks.module_text import ModuleText, TriggerTable
from torchdoctor.agent.checks.registry import enabled_rules
from torchdoctor.agent.checks.rules.syntax_error import SyntaxErrorRule, newer_python_syntax
from torchdoctor.agent.checks.smoke_tests import TEST_NAMED_SCRIPT_KEY, is_test_module
from torchdoctor.agent.checks.test_scope import outside_tests, production_only
from torchdoctor.agent.cpus import usable_cpus
from torchdoctor.agent.escape import one_line
from torchdoctor.sandbox.lifeline import die_with

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
    cpu_seconds: float = 0.0
    """This thread's CPU time on the file (parse, walk, rules): what a benchmark can sum over
    pool workers, whose CPU the parent's `getrusage` never sees (forkserver grandchildren)."""


class StaticResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    files: list[FileResult]
    project_findings: list[RawFinding] = Field(default_factory=list)
    project_applicable: list[str] = Field(default_factory=list)
    rules_run: list[str]
    seconds: float
    torch_floor: tuple[int, int] | None = None
    """The oldest torch the project's manifests allow (`EngineConfig.torch_floor`), for the
    peers' results judged after the pass."""

    def all_findings(self) -> list[RawFinding]:
        found = [f for result in self.files for f in result.findings]
        return found + self.project_findings

    def applicable_rules(self) -> set[str]:
        per_file = {rule for result in self.files for rule in result.applicable}
        return per_file | set(self.project_applicable)


class _DeadlineExceeded(Exception):
    pass


# Fields whose node is one of the parser's shared singletons (`Load()`, `Add()`, `Eq()`...).
_SINGLETON_FIELDS = frozenset({"ctx", "op", "ops"})
_SINGLETON_TYPES = (ast.expr_context, ast.boolop, ast.operator, ast.unaryop, ast.cmpop)
# Node types with a list that may hold something other than nodes: `None` (`{**d}`'s key, a
# keyword-only argument without default) or identifiers (`global a, b`). Every other list
# holds nodes only, so the walk takes it whole.
_MIXED_LISTS: tuple[type[ast.AST], ...] = (
    ast.Dict,
    ast.arguments,
    ast.Global,
    ast.Nonlocal,
    ast.MatchClass,
)


class _FieldPlan(NamedTuple):
    """How the walk reads one node type's children: one `attrgetter` call for the fields it
    walks (a tuple when `many`), and whether its lists must be filtered (`_MIXED_LISTS`)."""

    walked: attrgetter[Any] | None
    many: bool
    mixed: bool


_FIELD_PLANS: dict[tuple[type, bool], _FieldPlan] = {}


def _field_plan(kind: type, split: bool) -> _FieldPlan:
    """The walk's plan for one node type (without its singleton fields when `split`), cached."""
    plan = _FIELD_PLANS.get((kind, split))
    if plan is None:
        walked = [f for f in node_fields(kind) if not split or f not in _SINGLETON_FIELDS]
        plan = _FIELD_PLANS[(kind, split)] = _FieldPlan(
            walked=attrgetter(*walked) if walked else None,
            many=len(walked) > 1,
            mixed=issubclass(kind, _MIXED_LISTS),
        )
    return plan


_Visit = Callable[..., None]
_CallSubscribers = list[tuple[_Visit, frozenset[str]]]


def _call_visits(subscribers: _CallSubscribers) -> Callable[[ast.Call], list[_Visit]]:
    """The visits a call goes to, in rule order: rules with no `call_names` get every call,
    the others only calls of their names (one list per callee name, built once per module)."""
    by_name: dict[str, list[_Visit]] = {}

    def visits(call: ast.Call) -> list[_Visit]:
        func = call.func
        name = func.attr if isinstance(func, ast.Attribute) else ""
        if isinstance(func, ast.Name):
            name = func.id
        found = by_name.get(name)
        if found is None:
            found = by_name[name] = [
                visit for visit, names in subscribers if not names or name in names
            ]
        return found

    return visits


def _walk(
    ctx: ModuleContext,
    dispatch: dict[type, list[_Visit]],
    deadline: float,
    call_subscribers: _CallSubscribers,
    failed: dict[str, str],
) -> None:
    """One pre-order walk in source order: records parents, imports, the nodes of each type
    (in the parent map's order); then dispatches nodes, in that order, to the rules subscribed
    to their type (calls by their callee's name, see `Rule.call_names`). The visits run once
    the walk is done, so a visit that asks a module-wide analysis (def-use, loops, the call
    graph) gets it built from the whole module, not from the part walked so far.

    Children are read straight from each type's fields (no `ast.iter_child_nodes` generators).
    The parser shares one `Load()`/`Add()`/... object between all its uses: unless a rule
    subscribes to one, those singletons are neither walked nor recorded (no rule asks for
    their parent, which the map could only give as their last use). Names and constants
    without a visit are recorded by their parent and never stacked (nearly half the nodes).
    """
    split = not any(issubclass(kind, _SINGLETON_TYPES) for kind in dispatch)
    plans = {kind: plan for (kind, flag), plan in _FIELD_PLANS.items() if flag is split}
    stack: list[ast.AST] = [ctx.tree]
    parents = ctx.parents
    by_type = ctx.by_type
    imports = ctx.imports
    node_class = ast.AST
    count = 0
    call_visits = _call_visits(call_subscribers)
    call_kind, import_kind, import_from_kind = ast.Call, ast.Import, ast.ImportFrom
    dispatched: list[tuple[list[_Visit], ast.AST]] = []
    leaves = {  # nodes with no child to walk and no visit: recorded, never put on the stack
        kind
        for kind in (ast.Name, ast.Constant, ast.alias, ast.Pass, ast.Break, ast.Continue)
        if kind not in dispatch and _field_plan(kind, split).walked is None
    }
    while stack:
        node = stack.pop()
        count += 1
        if count % _DEADLINE_CHECK_EVERY == 0 and time.thread_time() > deadline:
            raise _DeadlineExceeded
        kind = node.__class__
        if kind is import_kind or kind is import_from_kind:
            imports.add(node)  # type: ignore[arg-type]
        if kind is call_kind:
            visits: list[_Visit] | None = call_visits(node)  # type: ignore[arg-type]
        else:
            visits = dispatch.get(kind)
        if visits:
            dispatched.append((visits, node))
        plan = plans.get(kind)
        if plan is None:
            plan = plans[kind] = _field_plan(kind, split)
        walked, many, mixed = plan
        if walked is None:
            continue
        if many:
            values = walked(node)
        else:  # one field (`Attribute.value`, `Expr.value`...): most often one node
            value = walked(node)
            if value.__class__ is not list:
                if isinstance(value, node_class):
                    parents[value] = node
                    try:
                        by_type[value.__class__].append(value)
                    except KeyError:
                        by_type[value.__class__] = [value]
                    if value.__class__ not in leaves:
                        stack.append(value)
                continue
            values = (value,)
        children: list[ast.AST] = []
        for value in values:
            if value.__class__ is list:
                if not mixed:
                    children += value
                    continue
                for item in value:
                    if isinstance(item, node_class):
                        children.append(item)
            elif isinstance(value, node_class):
                children.append(value)
        inner: list[ast.AST] = []
        for child in children:
            parents[child] = node
            child_kind = child.__class__
            try:
                by_type[child_kind].append(child)
            except KeyError:
                by_type[child_kind] = [child]
            if child_kind not in leaves:
                inner.append(child)
        inner.reverse()
        stack += inner
    if not split:  # singletons were walked at every use: list each one once, as the map does
        for kind in [k for k in by_type if issubclass(k, _SINGLETON_TYPES)]:
            by_type[kind] = list(dict.fromkeys(by_type[kind]))
    for count, (visits, node) in enumerate(dispatched, 1):
        if count % _DEADLINE_CHECK_EVERY == 0 and time.thread_time() > deadline:
            raise _DeadlineExceeded
        for visit in visits:
            if failed and visit.__self__.id in failed:  # type: ignore[attr-defined]
                continue
            try:
                visit(node, ctx)
            except (_DeadlineExceeded, RecursionError, MemoryError):
                raise
            except Exception as err:  # one rule's defect on odd code costs that rule only
                failed[visit.__self__.id] = _failure(err)  # type: ignore[attr-defined]


def analyse_source(
    path: str, source: str, rule_types: Sequence[type[Rule]], config: EngineConfig
) -> FileResult:
    """Parse, walk and check one module, with the cyclic garbage collector paused.

    Parsing and walking allocate hundreds of thousands of nodes, which would trigger collections
    that re-scan the whole heap and find nothing: the tree is freed by reference counting once
    the analyses' back-references are dropped. Cyclic garbage left behind, if any, is found by
    the next collections as usual.
    """
    collecting = gc.isenabled()
    gc.disable()
    cpu = time.thread_time()
    try:
        result = _analyse(path, source, rule_types, config)
        result.cpu_seconds = time.thread_time() - cpu
        return result
    finally:
        if collecting:
            gc.enable()


def _analyse(
    path: str, source: str, rule_types: Sequence[type[Rule]], config: EngineConfig
) -> FileResult:
    started = time.perf_counter()
    unparsed: RawFinding | None = None
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as err:
        newer = newer_python_syntax(source, err)
        if newer is not None:  # valid where the project runs it: no finding, a note
            return FileResult(
                path=path,
                note=f"written for Python {newer} (line {err.lineno}: type parameters or a "
                f"`type` alias), which this Python cannot parse: not audited",
            )
        unparsed = SyntaxErrorRule.finding(path, source, err)
        read = _read_as_python3(source, path)
        if read is None:
            return FileResult(path=path, findings=[unparsed], applicable=[SyntaxErrorRule.id])
        source, tree = read  # the syntax error is still reported; the other rules read this
    except (ValueError, RecursionError, MemoryError) as err:
        return FileResult(path=path, note=f"could not be parsed: {type(err).__name__}: {err}")
    text = ModuleText(source)
    ctx = ModuleContext(path=path, source=text, tree=tree, config=config)
    plan = _rule_set_plan(tuple(rule_types))
    triggered = plan.triggers.live(text)
    rules = [rule_type() for rule_type, ran in zip(rule_types, triggered, strict=True) if ran]
    dispatch: dict[type, list[_Visit]] = {}
    call_subscribers: _CallSubscribers = []
    for rule in rules:
        for node_type in rule.node_types:
            if node_type is ast.Call:
                call_subscribers.append((rule.visit, rule.call_names))
            else:
                dispatch.setdefault(node_type, []).append(rule.visit)
    note = None
    applicable: list[str] = [SyntaxErrorRule.id]
    applicable += [  # skipped for want of a trigger: applicable only if it applies everywhere
        rule_id
        for rule_id, ran in zip(plan.everywhere, triggered, strict=True)
        if not ran and rule_id
    ]
    deadline = time.thread_time() + config.file_deadline_s
    # This thread's CPU time cannot outrun the wall clock: until the wall clock alone is past
    # the budget, the deadline cannot be, and the thread-time read (a system call, ~6 us,
    # once per rule per file) is skipped.
    wall_deadline = time.perf_counter() + config.file_deadline_s
    failed: dict[str, str] = {}
    try:
        with scope_memo(ctx.memo_table("loops.walk_scope")):
            _walk(ctx, dispatch, deadline, call_subscribers, failed)
            for rule in rules:
                if time.perf_counter() > wall_deadline and time.thread_time() > deadline:
                    raise _DeadlineExceeded
                if rule.id in failed:
                    continue
                try:
                    rule.finish(ctx)
                    if rule.id != SyntaxErrorRule.id and rule.applies(ctx):
                        applicable.append(rule.id)
                except (_DeadlineExceeded, RecursionError, MemoryError):
                    raise
                except Exception as err:
                    failed[rule.id] = _failure(err)
    except _DeadlineExceeded:
        note = f"analysis stopped after the {config.file_deadline_s:g}s per-file deadline"
    except RecursionError:
        note = "analysis stopped: the file nests too deeply to analyse"
    finally:
        # The analyses point back at the context (a reference cycle): unlinking them lets
        # reference counting free the module's tree at once, with the collector off.
        ctx.__dict__.pop("flow", None)
        ctx.__dict__.pop("loops", None)
        ctx.__dict__.pop("calls", None)
        ctx.memo.clear()
    if failed:  # a failed rule's findings and deferred findings are left out, and said so
        ctx.findings = [f for f in ctx.findings if f.rule not in failed]
        for rule_id in failed:
            ctx.facts.pop(f"pending:{rule_id}", None)
        said = "; ".join(f"rule {rule_id} failed here ({why})" for rule_id, why in failed.items())
        note = f"{note}; {said}" if note else f"{said}: the other rules ran"
    scripts: frozenset[str] = frozenset()
    if is_test_module(path) and not ctx.test_module:  # named like a test, run as a script
        scripts = frozenset({path})
        ctx.facts[TEST_NAMED_SCRIPT_KEY] = True
    findings = outside_tests(stand_down(ctx.findings, source, tree), plan.production, scripts)
    return FileResult(
        path=path,
        findings=[unparsed, *findings] if unparsed is not None else findings,
        facts=ctx.facts,
        applicable=[a for a in applicable if a not in failed],
        note=note,
        seconds=time.perf_counter() - started,
    )


def _read_as_python3(source: str, path: str) -> tuple[str, ast.Module] | None:
    """A Python 2 module's source and tree once its Python 2 statements are rewritten (lines
    kept), or None when it is not that (a typo, a half-written file)."""
    rewritten = as_python3(source)
    if rewritten is None:
        return None
    try:
        return rewritten, ast.parse(rewritten, filename=path)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None


class _RuleSetPlan(NamedTuple):
    """What a rule set's modules share, built once per set (`select`/`ignore` make few)."""

    triggers: TriggerTable
    """The gates of every rule."""
    everywhere: tuple[str, ...]
    """Per rule, in order: its id when it stays applicable where its triggers are absent
    (it keeps the default `applies`; not `syntax-error`, applicable everywhere anyway), else
    ''."""
    production: frozenset[str]
    """The rules that stand down in test modules (`test_scope.production_only`)."""


@lru_cache(maxsize=64)
def _rule_set_plan(rule_types: tuple[type[Rule], ...]) -> _RuleSetPlan:
    return _RuleSetPlan(
        triggers=TriggerTable([rule_type.triggers for rule_type in rule_types]),
        everywhere=tuple(
            rule_type.id
            if rule_type.applies_everywhere() and rule_type.id != SyntaxErrorRule.id
            else ""
            for rule_type in rule_types
        ),
        production=production_only(rule_types),
    )


def _failure(err: Exception) -> str:
    """The exception in one short line (its text may quote the audited code)."""
    return one_line(f"{type(err).__name__}: {err}")[:200]


def _prepare_worker(config: EngineConfig, audit_pid: int) -> None:
    """Load the rules, then move everything imported out of the collector's sight for good:
    later collections scan only what the worker allocates, not the modules' objects. The
    worker dies with the audit process (no orphan after kill -9; the forkserver then exits)."""
    die_with(audit_pid)
    enabled_rules(config.select, config.ignore)
    gc.collect()
    gc.freeze()


def analyse_chunk(files: list[tuple[str, str]], config: EngineConfig) -> list[FileResult]:
    """One shard of the pass: a pool worker's, or a cluster task's (`ChunkRunner`)."""
    rule_types = enabled_rules(config.select, config.ignore)
    return [analyse_source(path, source, rule_types, config) for path, source in files]


def _analyse_chunk(args: tuple[list[tuple[str, str]], EngineConfig]) -> list[FileResult]:
    return analyse_chunk(*args)


ChunkRunner = Callable[[list[list[tuple[str, str]]], EngineConfig], list[list[FileResult]]]
"""Runs `analyse_chunk` on every shard elsewhere (a Ray cluster), results in shard order."""


def analyse_files(
    files: Sequence[tuple[str, str]],
    config: EngineConfig | None = None,
    workers: int | None = None,
    manifests: Mapping[str, str] | None = None,
    run_chunks: ChunkRunner | None = None,
    documents: Mapping[str, str] | None = None,
) -> StaticResult:
    """Run every enabled rule over `(relative path, text)` pairs, in parallel for many files.

    `manifests` (relative path -> text of requirements*.txt, pyproject.toml, ...) feeds the
    rules that read dependency manifests, and gives every module's rules the oldest torch
    they allow (`EngineConfig.torch_floor`). `run_chunks` shards a large pass over a cluster
    (`workers` is then its CPU count); the result is the same as on one machine.
    `documents` (README, model card) feed the rules that take facts from them.
    """
    config = config or EngineConfig()
    if manifests and config.torch_floor is None:
        config = replace(config, torch_floor=declared_floor(parse_manifests(manifests), "torch"))
    started = time.perf_counter()
    rule_types = enabled_rules(config.select, config.ignore)
    workers = workers or usable_cpus()
    if len(files) < PARALLEL_THRESHOLD or (workers == 1 and run_chunks is None):
        results = [analyse_source(path, text, rule_types, config) for path, text in files]
    elif run_chunks is not None:
        shards = run_chunks(_balanced_chunks(list(files), workers * 8), config)
        results = [r for shard in shards for r in shard]
    else:
        results = _in_worker_processes(_balanced_chunks(list(files), workers * 8), config, workers)
    results.sort(key=lambda r: r.path)  # project rules see files in one order, however sharded
    _say_advice_once(results)
    facts_by_file = {r.path: r.facts for r in results if r.facts}
    for rule_type in rule_types:
        for path, facts in rule_type.document_facts(documents or {}).items():
            facts_by_file.setdefault(path, {}).update(facts)
    project_findings: list[RawFinding] = []
    project_applicable: list[str] = []
    for rule_type in rule_types:
        project_findings.extend(rule_type.check_project(facts_by_file))
        if manifests and rule_type.reads_manifests:
            project_findings.extend(rule_type.check_manifests(manifests))
            project_applicable.append(rule_type.id)
    scripts = frozenset(
        path for path, facts in facts_by_file.items() if facts.get(TEST_NAMED_SCRIPT_KEY)
    )
    project_findings = outside_tests(project_findings, production_only(rule_types), scripts)
    return StaticResult(
        files=results,
        project_findings=project_findings,
        project_applicable=project_applicable,
        rules_run=[r.id for r in rule_types],
        seconds=time.perf_counter() - started,
        torch_floor=config.torch_floor,
    )


@contextmanager
def _worker_pool(config: EngineConfig, workers: int) -> Iterator[ProcessPoolExecutor]:
    """A pool of forkserver workers, their processes ended when the block is left.

    `ProcessPoolExecutor.shutdown(wait=True)` alone can wait forever: it asks each worker to
    exit through the one task queue they share, and a worker killed while the pool shuts down
    (the OOM killer) can die holding that queue's read lock, so that a live sibling never
    reads its exit message and is waited for without end. Every task is finished or given up
    when the block is left: the workers are killed first, and the shutdown only reaps them."""
    pool = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=get_context("forkserver"),
        initializer=_prepare_worker,
        initargs=(config, os.getpid()),
    )
    try:
        yield pool
    finally:
        for process in list((pool._processes or {}).values()):
            if process.is_alive():
                process.kill()
        pool.shutdown(wait=True, cancel_futures=True)


def _in_worker_processes(
    chunks: list[list[tuple[str, str]]], config: EngineConfig, workers: int
) -> list[FileResult]:
    """The chunks analysed by a pool of worker processes. A worker that dies (killed for its
    memory, or crashing in the parser on a hostile file) breaks the whole pool: the chunks it
    left unfinished are analysed again file by file, so a crash costs the audit one file's
    findings (a note says which), never the audit."""
    done: dict[int, list[FileResult]] = {}
    with _worker_pool(config, workers) as pool:
        futures = {
            pool.submit(_analyse_chunk, (chunk, config)): i for i, chunk in enumerate(chunks)
        }
        for future in as_completed(futures):
            try:
                done[futures[future]] = future.result()
            except BrokenProcessPool:
                continue  # every unfinished future says so: they are redone below
    left = [file for i, chunk in enumerate(chunks) if i not in done for file in chunk]
    results = [result for i in sorted(done) for result in done[i]]
    return results + (_one_file_at_a_time(left, config) if left else [])


_WORKER_DIED = (
    "not analysed: the analysis process died on this file (killed for its memory, or a crash "
    "in the parser)"
)


def _one_file_at_a_time(files: list[tuple[str, str]], config: EngineConfig) -> list[FileResult]:
    """Each file in a worker process of its own task, so that the file a worker dies on is
    known: it gets a note instead of findings, and a fresh worker takes the rest."""
    results: list[FileResult] = []
    queue = list(files)
    while queue:
        with _worker_pool(config, 1) as pool:
            while queue:
                file = queue.pop(0)
                try:
                    results += pool.submit(_analyse_chunk, ([file], config)).result()
                except BrokenProcessPool:
                    results.append(FileResult(path=file[0], note=_WORKER_DIED))
                    break
    return results


def _say_advice_once(results: list[FileResult]) -> None:
    """Advice repeated across the project stays as one finding (`advice_scope`)."""
    outcome = consolidate(f for result in results for f in result.findings)
    if not outcome:
        return
    for result in results:
        kept = [outcome.get(id(f), f) for f in result.findings]
        result.findings = [f for f in kept if f is not None]


def _balanced_chunks(files: list[tuple[str, str]], count: int) -> list[list[tuple[str, str]]]:
    """Spread files by size so no worker gets all the big ones."""
    ordered = sorted(files, key=lambda f: len(f[1]), reverse=True)
    chunks: list[list[tuple[str, str]]] = [[] for _ in range(max(1, min(count, len(ordered))))]
    for index, item in enumerate(ordered):
        chunks[index % len(chunks)].append(item)
    return chunks
