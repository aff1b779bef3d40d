"""The codemod contract, and the libcst plumbing every codemod shares.

A codemod edits only what its finding flags, keeps the rest of the file byte-for-byte
(libcst round-trips formatting and comments), returns None when it cannot apply safely, and
finds nothing to do when run on its own output (idempotence).
"""

from __future__ import annotations

import ast
import functools
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, TypeVar

import libcst as cst
from libcst.codemod import CodemodContext
from libcst.codemod.visitors import RemoveImportsVisitor
from libcst.helpers import get_full_name_for_node
from libcst.metadata import CodeRange, MetadataWrapper, ParentNodeProvider, PositionProvider

from torchdoctor.agent.fixes.models import FixKind, FixTarget, SmokeRun

N = TypeVar("N", bound=cst.CSTNode)
Edit = Callable[[cst.CSTNode], cst.CSTNode]

EXACT_RTOL = 1e-5
"""'Exact' for a refactor: identical up to printing round-trips of the probe's floats."""
BF16_RTOL = 2e-2


class Codemod:
    """One mechanical fix for one rule. Subclasses set the class attributes and `edit`."""

    rule: ClassVar[str]
    kind: ClassVar[FixKind]
    summary: ClassVar[str]
    rtol: ClassVar[float | None] = None
    """Allowed relative deviation of the seeded loss trajectory; None: not compared."""
    reproducibility: ClassVar[bool] = False
    """Judged by two runs without the harness's seed: only the script's seeding can match."""
    hash_order: ClassVar[bool] = False
    """Judged by the seeded run repeated under another PYTHONHASHSEED: an order that followed
    string hashes (a set of words) made the two differ; fixed, they agree."""
    extra_host_memory_mb: ClassVar[int] = 0
    """Host memory the fix's runs need beyond the script's limit (compiler workers)."""
    cuda_only: ClassVar[bool] = False
    """The change takes effect only where CUDA is available (a flag or keyword CPU runs
    ignore, an autocast enabled by a CUDA query): a run without CUDA cannot time it, and a
    difference measured there is noise."""
    per_epoch: ClassVar[bool] = False
    """The change saves time once per epoch (worker processes kept rather than started again),
    not per step: steps timed inside one epoch run the same code in both versions."""
    relieves: ClassVar[Literal["data_wait_share"] | None] = None
    """The baseline run's signal (a share of step time) that this fix takes away: measured
    large, the fix is verified first in its phase (`fix_order`)."""
    overhead: ClassVar[bool] = False
    """The fix removes host time per step (a sync, kernel launches): a fixed cost that is a
    sizeable share of the step only once the step's compute is cut. It is measured once, on
    top of the other verified fixes (`pipeline`), not first against the slow original, where
    it hides in the noise (+0.5% on the GPT-2 benchmark's float32 step, +3.3% on the verified
    bf16 one, both on an H100)."""

    def transform(self, source: str, target: FixTarget) -> str | None:
        """The fixed source, or None when the fix does not apply (or is already there)."""
        try:
            ctx = SourceContext(source)
        except (cst.ParserSyntaxError, RecursionError):
            return None
        if not self.edit(ctx, target) or not ctx.has_edits:
            return None
        fixed = without_orphaned_imports(source, ctx.apply()).code
        return None if fixed == source else fixed

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        """Register edits on `ctx`; False when the fix cannot be applied safely."""
        raise NotImplementedError

    def explain(self, source: str, target: FixTarget) -> str | None:
        """Why the fix is not applied at `target`, when the codemod recognised the problem
        but found no safe edit; None when it has nothing to say. By default: the reason the
        edit gave when it declined (`SourceContext.decline`)."""
        try:
            ctx = SourceContext(source)
        except (cst.ParserSyntaxError, RecursionError) as exc:
            return not_parsed(source, exc)
        if self.edit(ctx, target) and ctx.has_edits:
            return None
        return ctx.refusal

    def symptom_gone(self, before: SmokeRun, after: SmokeRun) -> tuple[bool, str]:
        """For correctness fixes: did the defect's observable symptom disappear?

        The default asks for a healthy run (every recorded loss finite), or, for a
        reproducibility fix, two unseeded runs with identical losses. Codemods whose symptom
        the probes measure directly override this.
        """
        if self.reproducibility:
            return repeatable(after)
        return healthy_run(before, after)


def not_parsed(source: str, exc: cst.ParserSyntaxError | RecursionError) -> str:
    """Why a file the rules could read gets no edit: the codemods rewrite a libcst tree of
    Python 3, and the rules fall back to a more lenient reading (Python 2's `print x`)."""
    if isinstance(exc, RecursionError):
        return "the file nests too deeply for the code rewriter to parse: edit it by hand"
    try:
        ast.parse(source)
    except SyntaxError as error:
        where = f"line {error.lineno}: {error.msg}"
    else:
        where = f"line {exc.editor_line}, which the code rewriter cannot read"
    return (
        f"the file does not parse as Python 3 ({where}), e.g. Python 2 code (`print x`): "
        "port it first; no automatic edit is made"
    )


def repeatable(after: SmokeRun) -> tuple[bool, str]:
    """Two runs of the fixed script without the harness's seed recorded the same losses."""
    repeat = after.signals.repeat_losses
    if not repeat:
        return False, "no repeated run to compare"
    if repeat != after.losses:
        return False, "two unseeded runs of the fixed script still differ"
    return True, f"two unseeded runs of the fixed script give the same {len(repeat)} losses"


def healthy_run(before: SmokeRun, after: SmokeRun) -> tuple[bool, str]:
    """The symptom check of last resort: the fixed run recorded losses, all finite."""
    bad = [v for v in after.losses if v != v or v in (float("inf"), float("-inf"))]
    if bad:
        return False, f"{len(bad)} non-finite losses after the fix"
    if not after.losses and before.losses:
        return False, "the fixed run recorded no loss"
    if not after.losses:
        return True, "no loss on either side (an inference script): the fixed run completes"
    return True, f"{len(after.losses)} finite losses after the fix"


class _Collector(cst.CSTVisitor):
    def __init__(self) -> None:
        self.nodes: list[cst.CSTNode] = []

    def on_visit(self, node: cst.CSTNode) -> bool:
        self.nodes.append(node)
        return True


class _Rewriter(cst.CSTTransformer):
    def __init__(self, ctx: SourceContext) -> None:
        self.ctx = ctx

    def on_leave(  # type: ignore[override]
        self, original_node: cst.CSTNode, updated_node: cst.CSTNode
    ) -> cst.CSTNode | cst.RemovalSentinel | cst.FlattenSentinel[cst.CSTNode]:
        key = id(original_node)
        if key in self.ctx.removed:
            return cst.RemovalSentinel.REMOVE
        node = updated_node
        for edit in self.ctx.replacements.get(key, ()):
            node = edit(node)
        before = self.ctx.before.get(key, [])
        after = self.ctx.after.get(key, [])
        if before or after:
            return cst.FlattenSentinel([*before, node, *after])
        return node


@dataclass(frozen=True)
class _Parsed:
    """What a source parses to, read-only: libcst's trees are immutable, and edits are kept
    by each `SourceContext` apart, keyed by the node's id."""

    module: cst.Module
    positions: Mapping[cst.CSTNode, CodeRange]
    parents: Mapping[cst.CSTNode, cst.CSTNode]
    nodes: tuple[cst.CSTNode, ...]
    aliases: Mapping[str, str]


@functools.lru_cache(maxsize=4)
def _parsed(source: str) -> _Parsed:
    """The parse of `source`, kept for the next contexts on the same text: a file is read by
    `transform` then `explain`, by every codemod that may fix it, and again when fixes are
    combined (the same source parsed again in half the contexts the unit tests build, 8.8 of
    15.3 CPU-s there). A few files only: a large module's tree and metadata are big."""
    module = cst.parse_module(source)
    wrapper = MetadataWrapper(module, unsafe_skip_copy=True)
    collector = _Collector()
    module.visit(collector)
    return _Parsed(
        module=module,
        positions=wrapper.resolve(PositionProvider),
        parents=wrapper.resolve(ParentNodeProvider),
        nodes=tuple(collector.nodes),
        aliases=_import_aliases(module),
    )


class SourceContext:
    """A parsed module with positions, parents, import aliases, and a queue of edits."""

    def __init__(self, source: str) -> None:
        parsed = _parsed(source)
        self.source = source
        self.module = parsed.module
        self._positions = parsed.positions
        self._parents = parsed.parents
        self.nodes = list(parsed.nodes)
        self.replacements: dict[int, list[Edit]] = {}
        self.before: dict[int, list[cst.CSTNode]] = {}
        self.after: dict[int, list[cst.CSTNode]] = {}
        self.removed: set[int] = set()
        self.aliases = dict(parsed.aliases)  # `require_module` adds the imports it inserts
        self.refusal: str | None = None

    def decline(self, reason: str) -> bool:
        """Give up on the edit, saying why (shown with the finding as "no automatic fix")."""
        self.refusal = reason
        return False

    # --- reading -------------------------------------------------------------------------

    def line(self, node: cst.CSTNode) -> int:
        return int(self._positions[node].start.line)

    def end_line(self, node: cst.CSTNode) -> int:
        return int(self._positions[node].end.line)

    def parent(self, node: cst.CSTNode) -> cst.CSTNode | None:
        return self._parents.get(node)

    def ancestors(self, node: cst.CSTNode) -> Iterable[cst.CSTNode]:
        current = self._parents.get(node)
        while current is not None:
            yield current
            current = self._parents.get(current)

    def find(
        self,
        node_type: type[N],
        within: tuple[int, int] | None = None,
        where: Callable[[N], bool] | None = None,
        inside: cst.CSTNode | None = None,
    ) -> list[N]:
        """Nodes of a type, in source order: overlapping lines `within`, under `inside`."""
        found: list[N] = []
        pool = self.nodes if inside is None else descendants(inside)
        for node in pool:
            if not isinstance(node, node_type):
                continue
            if within is not None and not _overlaps(self, node, within):
                continue
            if where is not None and not where(node):
                continue
            found.append(node)
        return found

    def qualname(self, expr: cst.BaseExpression) -> str | None:
        """`F.softmax` -> 'torch.nn.functional.softmax' when `F` came from an import."""
        dotted = dotted_name(expr)
        if dotted is None:
            return None
        head, _, rest = dotted.partition(".")
        base = self.aliases.get(head)
        if base is None:
            return None
        return f"{base}.{rest}" if rest else base

    def alias_of(self, module_name: str) -> str | None:
        """The local name bound to a whole module (`import numpy as np` -> 'np')."""
        for local, qualified in self.aliases.items():
            if qualified == module_name:
                return local
        return None

    def code(self, node: cst.CSTNode) -> str:
        return self.module.code_for_node(node)

    def calls_method(self, scope: cst.CSTNode, receiver: str, method: str) -> bool:
        """Whether `receiver.method(...)` is called anywhere under `scope`."""
        return any(
            isinstance(c.func, cst.Attribute)
            and c.func.attr.value == method
            and dotted_name(c.func.value) == receiver
            for c in self.find(cst.Call, inside=scope)
        )

    # --- editing -------------------------------------------------------------------------

    @property
    def has_edits(self) -> bool:
        return bool(self.replacements or self.before or self.after or self.removed)

    def replace(self, node: cst.CSTNode, edit: Edit) -> None:
        self.replacements.setdefault(id(node), []).append(edit)

    def substitute(self, node: cst.CSTNode, new: cst.CSTNode) -> None:
        """Replace `node` by `new` (nothing under `node` may carry other edits)."""

        def put(_old: cst.CSTNode) -> cst.CSTNode:
            return new

        self.replace(node, put)

    def set_call_keyword(self, call: cst.Call, name: str, value: str) -> None:
        """Give `call` the keyword argument `name=value` (replacing an existing value)."""

        def put(node: cst.CSTNode) -> cst.CSTNode:
            return set_keyword(node, name, value) if isinstance(node, cst.Call) else node

        self.replace(call, put)

    def remove(self, stmt: cst.CSTNode) -> None:
        self.removed.add(id(stmt))

    def insert_before(self, stmt: cst.CSTNode, code: str | Sequence[cst.CSTNode]) -> None:
        self.before.setdefault(id(stmt), []).extend(_statements(code))

    def insert_after(self, stmt: cst.CSTNode, code: str | Sequence[cst.CSTNode]) -> None:
        self.after.setdefault(id(stmt), []).extend(_statements(code))

    def require_module(self, module_name: str) -> str:
        """The local name of `module_name`, adding `import module_name` when it is missing."""
        local = self.alias_of(module_name)
        if local is not None:
            return local
        self.insert_import(module_name)
        self.aliases[module_name.split(".")[0]] = module_name.split(".")[0]
        return module_name

    def insert_import(self, module_name: str) -> None:
        """`import module_name` where isort (and ruff's I rules) would put it: among the
        leading imports of its section (standard library first), in name order."""
        block = _import_block(list(self.module.body))
        stdlib = _is_stdlib(module_name)
        same = [s for s in block if _is_stdlib(_first_module(s)) == stdlib]
        plain = [s for s in same if isinstance(s.body[0], cst.Import)]
        later = [s for s in plain if _first_module(s) > module_name]
        code = f"import {module_name}\n"
        if later:
            # the new line takes over the blank lines or comments that open the section
            first_later = later[0]
            statement = _statements(code)[0].with_changes(leading_lines=first_later.leading_lines)
            self.insert_before(first_later, [statement])
            self.replace(first_later, lambda node: node.with_changes(leading_lines=[]))
        elif plain:
            self.insert_after(plain[-1], code)
        elif same:
            self.insert_before(same[0], code)
        elif block and stdlib:
            # the first section: it takes the block's leading lines, a blank line follows it
            first = next((s for s in block if _first_module(s) != "__future__"), None)
            if first is None:
                self.insert_after(block[-1], code)
                return
            statement = _statements(code)[0].with_changes(leading_lines=first.leading_lines)
            self.insert_before(first, [statement])
            self.replace(first, lambda node: node.with_changes(leading_lines=[cst.EmptyLine()]))
        else:
            self.insert_module_level(code, imports=True)

    def insert_module_level(self, code: str, *, imports: bool = False) -> None:
        """Insert after the module's imports; code that is not an import gets a blank line."""
        if not imports and not code.startswith("\n"):
            code = "\n" + code
        body = list(self.module.body)
        anchor = _last_import(body)
        if anchor is not None:
            anchor = _later_binding(body, anchor, _free_names(code)) or anchor
            self.insert_after(anchor, code)
        elif body and _is_docstring(body[0]):
            self.insert_after(body[0], code)
        elif body:
            self.insert_before(body[0], code)
        else:
            self.replacements.setdefault(id(self.module), []).append(
                lambda m: m.with_changes(body=_statements(code)) if isinstance(m, cst.Module) else m
            )

    def apply(self) -> cst.Module:
        return self.module.visit(_Rewriter(self))


# --- helpers shared by codemods ---------------------------------------------------------------


def dotted_name(expr: cst.BaseExpression) -> str | None:
    """`self.opt` -> 'self.opt'; anything but a Name/Attribute chain -> None."""
    parts: list[str] = []
    while isinstance(expr, cst.Attribute):
        parts.append(expr.attr.value)
        expr = expr.value
    if not isinstance(expr, cst.Name):
        return None
    parts.append(expr.value)
    return ".".join(reversed(parts))


def method_call(node: cst.CSTNode, method: str) -> cst.Call | None:
    """`node` when it is a call `<something>.method(...)`."""
    if (
        isinstance(node, cst.Call)
        and isinstance(node.func, cst.Attribute)
        and node.func.attr.value == method
    ):
        return node
    return None


def keyword(call: cst.Call, name: str) -> cst.Arg | None:
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value == name:
            return arg
    return None


def add_keyword(call: cst.Call, name: str, value: str) -> cst.Call:
    """Append `name=value` to a call, keeping a trailing comma style when there is one."""
    new_arg = cst.Arg(
        keyword=cst.Name(name),
        value=cst.parse_expression(value),
        equal=cst.AssignEqual(
            whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace("")
        ),
    )
    args = list(call.args)
    if not args:
        return call.with_changes(args=[new_arg])
    last = args[-1]
    if isinstance(last.comma, cst.Comma) and isinstance(
        last.comma.whitespace_after, cst.ParenthesizedWhitespace
    ):
        # one argument per line with a trailing comma: the new one gets its own line, indented
        # like the previous argument; the last argument keeps its comment
        closing = last.comma.whitespace_after
        before_last = args[-2].comma if len(args) > 1 else None
        if isinstance(before_last, cst.Comma) and isinstance(
            before_last.whitespace_after, cst.ParenthesizedWhitespace
        ):
            indent = before_last.whitespace_after
        else:
            indent = closing.with_changes(
                last_line=cst.SimpleWhitespace(closing.last_line.value + "    ")
            )
        args[-1] = last.with_changes(
            comma=last.comma.with_changes(
                whitespace_after=closing.with_changes(
                    indent=indent.indent, last_line=indent.last_line
                )
            )
        )
        new_comma = cst.Comma(
            whitespace_after=closing.with_changes(first_line=cst.TrailingWhitespace())
        )
        args.append(new_arg.with_changes(comma=new_comma))
        return call.with_changes(args=args)
    before_last = args[-2].comma if len(args) > 1 else None
    if (
        last.comma is cst.MaybeSentinel.DEFAULT
        and isinstance(last.whitespace_after_arg, cst.ParenthesizedWhitespace)
        and isinstance(before_last, cst.Comma)
        and isinstance(before_last.whitespace_after, cst.ParenthesizedWhitespace)
    ):
        # arguments on lines of their own, the closing parenthesis on its own line, no
        # trailing comma: the new argument gets a line of its own too, indented like the last
        # one and spelled like it (`shuffle = True` keeps its spaces around `=`)
        args[-1] = last.with_changes(
            comma=cst.Comma(whitespace_after=before_last.whitespace_after),
            whitespace_after_arg=cst.SimpleWhitespace(""),
        )
        equal = last.equal if isinstance(last.equal, cst.AssignEqual) else new_arg.equal
        args.append(
            new_arg.with_changes(equal=equal, whitespace_after_arg=last.whitespace_after_arg)
        )
        return call.with_changes(args=args)
    # the line break before a closing parenthesis on its own line (`f(\n    a, b\n)`) stays
    # before the parenthesis, after the new argument
    args[-1] = last.with_changes(
        comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" ")),
        whitespace_after_arg=cst.SimpleWhitespace(""),
    )
    args.append(new_arg.with_changes(whitespace_after_arg=last.whitespace_after_arg))
    return call.with_changes(args=args)


def set_keyword(call: cst.Call, name: str, value: str) -> cst.Call:
    """Set `name=value`, replacing the keyword's value when it is already there."""
    existing = keyword(call, name)
    if existing is None:
        return add_keyword(call, name, value)
    args = [
        a.with_changes(value=cst.parse_expression(value)) if a is existing else a for a in call.args
    ]
    return call.with_changes(args=args)


def statement_of(ctx: SourceContext, node: cst.CSTNode) -> cst.BaseStatement | None:
    """The statement (simple line or compound) that holds `node`, or `node` itself."""
    if isinstance(node, cst.BaseStatement):
        return node
    for anc in ctx.ancestors(node):
        if isinstance(anc, cst.BaseStatement):
            return anc
    return None


def line_statement(ctx: SourceContext, line: int) -> cst.SimpleStatementLine | None:
    """The one simple statement line that starts at `line`, or None (none, or a line the
    statement shares with other code)."""
    found = ctx.find(cst.SimpleStatementLine, where=lambda s: ctx.line(s) == line)
    return found[0] if len(found) == 1 and len(found[0].body) == 1 else None


def enclosing_body(ctx: SourceContext, stmt: cst.CSTNode) -> Sequence[cst.BaseStatement] | None:
    """The statement list `stmt` sits in (a block's or the module's)."""
    parent = ctx.parent(stmt)
    if isinstance(parent, cst.IndentedBlock | cst.Module):
        return parent.body
    return None


def scope_of(ctx: SourceContext, node: cst.CSTNode) -> cst.CSTNode:
    """The function around `node`, or the module."""
    for anc in ctx.ancestors(node):
        if isinstance(anc, cst.FunctionDef):
            return anc
    return ctx.module


def name_is_read(
    ctx: SourceContext,
    name: str,
    scope: cst.CSTNode,
    skip: cst.CSTNode | Sequence[cst.CSTNode],
    *,
    after: int = 0,
    until: int | None = None,
) -> bool:
    """Whether `name` is read under `scope`, outside the subtree(s) `skip`, on a line after
    `after` (up to `until`)."""
    return first_read(ctx, name, scope, skip, after=after, until=until) is not None


def first_read(
    ctx: SourceContext,
    name: str,
    scope: cst.CSTNode,
    skip: cst.CSTNode | Sequence[cst.CSTNode],
    *,
    after: int = 0,
    until: int | None = None,
) -> cst.Name | None:
    """The first read `name_is_read` finds, to show where it is."""
    skipped = {
        id(n) for s in ([skip] if isinstance(skip, cst.CSTNode) else skip) for n in descendants(s)
    }
    for node in ctx.find(cst.Name, inside=scope, where=lambda n: n.value == name):
        at = ctx.line(node)
        if id(node) in skipped or at <= after or (until is not None and at > until):
            continue
        parent = ctx.parent(node)
        if isinstance(parent, cst.AssignTarget) or (
            isinstance(parent, cst.Attribute) and parent.attr is node
        ):
            continue
        return node
    return None


def descendants(node: cst.CSTNode) -> list[cst.CSTNode]:
    """`node` and every node under it, in source order."""
    collector = _Collector()
    node.visit(collector)
    return collector.nodes


def _overlaps(ctx: SourceContext, node: cst.CSTNode, within: tuple[int, int]) -> bool:
    first, last = within
    return ctx.line(node) <= last and ctx.end_line(node) >= first


def _statements(code: str | Sequence[cst.CSTNode]) -> list[cst.CSTNode]:
    if not isinstance(code, str):
        return list(code)
    module = cst.parse_module(code)
    body: list[cst.CSTNode] = list(module.body)
    if (
        body
        and module.header
        and isinstance(body[0], cst.SimpleStatementLine | cst.BaseCompoundStatement)
    ):
        # blank lines written before the first statement belong to it, not to a module header
        body[0] = body[0].with_changes(leading_lines=[*module.header, *body[0].leading_lines])
    return body


def _is_docstring(stmt: cst.BaseStatement) -> bool:
    return (
        isinstance(stmt, cst.SimpleStatementLine)
        and len(stmt.body) == 1
        and isinstance(stmt.body[0], cst.Expr)
        and isinstance(stmt.body[0].value, cst.SimpleString | cst.ConcatenatedString)
    )


def _import_block(body: Sequence[cst.BaseStatement]) -> list[cst.SimpleStatementLine]:
    """The module's leading top-level import statements (after a docstring)."""
    block: list[cst.SimpleStatementLine] = []
    for stmt in body:
        if isinstance(stmt, cst.SimpleStatementLine) and all(
            isinstance(s, cst.Import | cst.ImportFrom) for s in stmt.body
        ):
            block.append(stmt)
        elif _is_docstring(stmt) and not block:
            continue
        elif block:
            break
    return block


def _first_module(stmt: cst.SimpleStatementLine) -> str:
    node = stmt.body[0]
    if isinstance(node, cst.Import):
        return cst.Module([]).code_for_node(node.names[0].name)
    if isinstance(node, cst.ImportFrom) and node.module is not None and not node.relative:
        return cst.Module([]).code_for_node(node.module)
    return "."  # a relative import: the local section, never the standard library


def _is_stdlib(module_name: str) -> bool:
    return module_name.split(".")[0] in sys.stdlib_module_names


def without_orphaned_imports(source: str, fixed: cst.Module) -> cst.Module:
    """Remove the imports the fix left unused: those the original code used and the fixed code
    no longer does (an import the user already left unused stays theirs)."""
    try:
        before = ast.parse(source)
    except SyntaxError:
        return fixed
    used_before = _used_names(before)
    after_tree = ast.parse(fixed.code)
    used_after = _used_names(after_tree)
    context = CodemodContext()
    found = False
    for node in after_tree.body:
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            continue
        for alias in node.names:
            bound = alias.asname or alias.name.split(".")[0]
            if bound in used_before and bound not in used_after:
                found = True
                if isinstance(node, ast.Import):
                    RemoveImportsVisitor.remove_unused_import(
                        context, alias.name, asname=alias.asname
                    )
                elif node.module:
                    RemoveImportsVisitor.remove_unused_import(
                        context, node.module, alias.name, asname=alias.asname
                    )
    if not found:
        return fixed
    cleaned = RemoveImportsVisitor(context).transform_module(fixed)
    if cleaned.body and not cleaned.header:
        # the file's first statement went: the next one does not start with blank lines
        first = cleaned.body[0]
        lines = list(first.leading_lines)
        while lines and lines[0].comment is None:
            lines.pop(0)
        cleaned = cleaned.with_changes(
            body=[first.with_changes(leading_lines=lines), *cleaned.body[1:]]
        )
    return _sections_kept_apart(cleaned)


def _import_section(stmt: cst.BaseStatement) -> str | None:
    """'stdlib' or 'other' for a top-level import line, None for anything else."""
    if not isinstance(stmt, cst.SimpleStatementLine) or len(stmt.body) != 1:
        return None
    node = stmt.body[0]
    if isinstance(node, cst.Import):
        name = get_full_name_for_node(node.names[0].name) or ""
    elif isinstance(node, cst.ImportFrom) and node.module is not None and not node.relative:
        name = get_full_name_for_node(node.module) or ""
    else:
        return None
    return "stdlib" if _is_stdlib(name) else "other"


def _sections_kept_apart(module: cst.Module) -> cst.Module:
    """A removed import that opened a section took the blank line before it: put one back
    between the last stdlib import and the next section, as isort writes them."""
    body = list(module.body)
    for i in range(1, len(body)):
        before, here = _import_section(body[i - 1]), _import_section(body[i])
        if before == "stdlib" and here == "other" and not body[i].leading_lines:
            body[i] = body[i].with_changes(leading_lines=[cst.EmptyLine()])
    return module.with_changes(body=body)


def _used_names(tree: ast.Module) -> set[str]:
    """Names read anywhere (roots of attribute chains included), imports aside."""
    return {
        n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Store)
    }


def _last_import(body: Sequence[cst.BaseStatement]) -> cst.BaseStatement | None:
    """The last top-level import of the leading import block (docstring and comments aside)."""
    last: cst.BaseStatement | None = None
    for stmt in body:
        if isinstance(stmt, cst.SimpleStatementLine) and all(
            isinstance(s, cst.Import | cst.ImportFrom) for s in stmt.body
        ):
            last = stmt
        elif _is_docstring(stmt) and last is None:
            continue
        elif last is not None:
            break
    return last


def _free_names(code: str) -> set[str]:
    """The names `code` reads (`torch` of `torch.manual_seed(0)`)."""
    try:
        tree = ast.parse(code.strip("\n"))
    except SyntaxError:
        return set()
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}


def _later_binding(
    body: Sequence[cst.BaseStatement], anchor: cst.BaseStatement, names: set[str]
) -> cst.BaseStatement | None:
    """The last top-level import after `anchor` that binds one of `names`: imports split by a
    setup statement (`matplotlib.use("Agg")` before `import torch`, wavenet_vocoder's train.py)
    bind the name after the leading block ends, and code inserted there would raise NameError.
    Imports under a `try`/`if` count, the main guard's do not (it runs last)."""
    later: cst.BaseStatement | None = None
    extending = False  # through the rest of that import block
    for stmt in body[body.index(anchor) + 1 :]:
        if _is_main_guard(stmt):
            extending = False
        elif _import_aliases_of(stmt) & names:
            later, extending = stmt, True
        elif extending and _is_import_line(stmt):
            later = stmt
        else:
            extending = False
    return later


def _import_aliases_of(stmt: cst.BaseStatement) -> set[str]:
    return {
        (alias.evaluated_alias or alias.evaluated_name).split(".")[0]
        for node in _imports_in(stmt)
        if not isinstance(node.names, cst.ImportStar)
        for alias in node.names
    }


def _is_import_line(stmt: cst.BaseStatement) -> bool:
    return isinstance(stmt, cst.SimpleStatementLine) and all(
        isinstance(s, cst.Import | cst.ImportFrom) for s in stmt.body
    )


def _imports_in(stmt: cst.BaseStatement) -> list[cst.Import | cst.ImportFrom]:
    """The imports a top-level statement runs (not those of its functions or classes)."""
    found: list[cst.Import | cst.ImportFrom] = []
    pending: list[cst.CSTNode] = [stmt]
    while pending:
        node = pending.pop()
        if isinstance(node, cst.Import | cst.ImportFrom):
            found.append(node)
        elif not isinstance(node, cst.FunctionDef | cst.ClassDef | cst.Lambda):
            pending.extend(node.children)
    return found


def _is_main_guard(stmt: cst.BaseStatement) -> bool:
    return isinstance(stmt, cst.If) and "__name__" in cst.Module([]).code_for_node(stmt.test)


def _import_aliases(module: cst.Module) -> dict[str, str]:
    """Local names bound by top-level and nested imports -> the qualified name they stand for."""
    aliases: dict[str, str] = {}
    collector = _Collector()
    module.visit(collector)
    for node in collector.nodes:
        if isinstance(node, cst.Import):
            for alias in node.names:
                full = dotted_name(alias.name) or ""
                if alias.asname is not None and isinstance(alias.asname.name, cst.Name):
                    aliases[alias.asname.name.value] = full
                else:
                    head = full.split(".")[0]
                    aliases[head] = head
        elif isinstance(node, cst.ImportFrom) and not node.relative and node.module is not None:
            base = dotted_name(node.module) or ""
            if isinstance(node.names, cst.ImportStar):
                continue
            for alias in node.names:
                name = dotted_name(alias.name) or ""
                local = name
                if alias.asname is not None and isinstance(alias.asname.name, cst.Name):
                    local = alias.asname.name.value
                aliases[local] = f"{base}.{name}"
    return aliases
