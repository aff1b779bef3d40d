"""Edits to a model class's `forward` (annotations, a decorator, statements at its top) and to
its module (imports, a helper before the class), made with libcst so the rest of the file keeps
its formatting and comments. What the forward takes and returns is read first (`read_forward`)
so the callers decide what to write."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path

import libcst as cst
from pydantic import BaseModel, ConfigDict, Field

from torchdoctor.agent.fixes.formatting import (
    changed_ranges,
    format_changed_lines,
    format_range,
    ruff_path,
    ruff_settings,
)

LONG_LINE = 100


class ForwardShape(BaseModel):
    """The parts of `forward` the edits depend on."""

    model_config = ConfigDict(extra="forbid")

    params: list[str] = Field(description="positional parameters after self, in order")
    annotated: dict[str, str] = Field(description="parameter -> the annotation it has already")
    has_return_annotation: bool
    returns: list[int] = Field(
        description="per return statement: its tuple's length, 1 for any other value, 0 for none"
    )
    line: int = Field(description="the `def` line")
    end_line: int

    @property
    def body(self) -> range:
        """The lines after the `def` line: a run that executes one reached the body."""
        return range(self.line + 1, self.end_line + 1)


class ForwardEdit(BaseModel):
    """What to change; every text is Python source."""

    model_config = ConfigDict(extra="forbid")

    params: dict[str, str] = Field(default_factory=dict, description="parameter -> annotation")
    returns: str | None = None
    decorator: str | None = None
    prologue: list[str] = Field(
        default_factory=list, description="statements at the top of the body"
    )
    before_class: str = Field("", description="module-level code placed just before the class")
    imports: list[str] = Field(default_factory=list, description="import statements to add")


def read_forward(text: str, class_name: str) -> ForwardShape | str:
    """The forward of the module-level class `class_name`, or why it cannot be edited."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError):
        return "the model's file does not parse"
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name), None)
    if cls is None:
        return f"{class_name} is not a module-level class"
    forward = next(
        (n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "forward"), None
    )
    if forward is None:
        return f"{class_name} inherits its forward(): nothing of its own to annotate"
    positional = [*forward.args.posonlyargs, *forward.args.args][1:]
    return ForwardShape(
        params=[a.arg for a in positional],
        annotated={a.arg: ast.unparse(a.annotation) for a in positional if a.annotation},
        has_return_annotation=forward.returns is not None,
        returns=[_arity(r) for r in _returns(forward)],
        line=forward.lineno,
        end_line=forward.end_lineno or forward.lineno,
    )


def forward_body(text: str, class_name: str) -> range:
    """The lines of the forward's body in `text` (empty when it has none to edit)."""
    shape = read_forward(text, class_name)
    return range(0) if isinstance(shape, str) else shape.body


def _returns(function: ast.FunctionDef) -> list[ast.Return]:
    """The function's own return statements (not those of functions nested in it)."""
    found: list[ast.Return] = []
    stack: list[ast.AST] = list(function.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Return):
            found.append(node)
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            stack.extend(ast.iter_child_nodes(node))
    return found


def _arity(node: ast.Return) -> int:
    if node.value is None or (isinstance(node.value, ast.Constant) and node.value.value is None):
        return 0
    return len(node.value.elts) if isinstance(node.value, ast.Tuple) else 1


def edit_forward(text: str, class_name: str, edit: ForwardEdit) -> str:
    """`text` with `edit` applied to `class_name`'s forward and to the module."""
    return edit_function(text, class_name, "forward", edit)


def edit_function(text: str, owner: str | None, name: str, edit: ForwardEdit) -> str:
    """`text` with `edit` applied to the method `name` of the module-level class `owner`, or to
    the module-level function `name` (owner None), and to the module (imports, and code before
    the owner, or before the function)."""
    module = cst.parse_module(text)
    edited = module.visit(_Edit(owner, edit, name))
    assert isinstance(edited, cst.Module)
    return edited.code


class _Edit(cst.CSTTransformer):
    def __init__(self, class_name: str | None, edit: ForwardEdit, function: str) -> None:
        super().__init__()
        self.class_name = class_name
        self.function = function
        self.edit = edit
        self.scopes: list[str] = []

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self.scopes.append(f"class {node.name.value}")

    def leave_ClassDef(self, original: cst.ClassDef, updated: cst.ClassDef) -> cst.ClassDef:
        self.scopes.pop()
        return updated

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self.scopes.append(f"def {node.name.value}")

    def leave_FunctionDef(
        self, original: cst.FunctionDef, updated: cst.FunctionDef
    ) -> cst.FunctionDef:
        self.scopes.pop()
        owner = [f"class {self.class_name}"] if self.class_name else []
        if self.scopes != owner or updated.name.value != self.function:
            return updated
        edit = self.edit
        params = updated.params.with_changes(
            posonly_params=[self._param(p) for p in updated.params.posonly_params],
            params=[self._param(p) for p in updated.params.params],
        )
        updated = updated.with_changes(params=params)
        if edit.returns is not None:
            updated = updated.with_changes(
                returns=cst.Annotation(cst.parse_expression(edit.returns))
            )
        if edit.decorator is not None:
            decorator = cst.Decorator(decorator=cst.parse_expression(edit.decorator))
            updated = updated.with_changes(decorators=[*updated.decorators, decorator])
        if edit.prologue and isinstance(updated.body, cst.IndentedBlock):
            body = list(updated.body.body)
            at = 1 if body and _is_docstring(body[0]) else 0
            added = [cst.parse_statement(s) for s in edit.prologue]
            updated = updated.with_changes(
                body=updated.body.with_changes(body=[*body[:at], *added, *body[at:]])
            )
        return updated

    def _param(self, param: cst.Param) -> cst.Param:
        annotation = self.edit.params.get(param.name.value)
        if annotation is None:
            return param
        return param.with_changes(annotation=cst.Annotation(cst.parse_expression(annotation)))

    def leave_Module(self, original: cst.Module, updated: cst.Module) -> cst.Module:
        body = list(updated.body)
        top = self.class_name or self.function
        at = next(
            i
            for i, s in enumerate(body)
            if isinstance(s, cst.ClassDef | cst.FunctionDef) and s.name.value == top
        )
        if self.edit.before_class:
            helper = list(cst.parse_module(self.edit.before_class).body)
            blank = [cst.EmptyLine(), cst.EmptyLine()]
            helper[0] = helper[0].with_changes(leading_lines=blank)
            body[at:at] = helper
        slot = _import_slot(body[:at])
        body[slot:slot] = [cst.parse_statement(s) for s in self.edit.imports]
        return updated.with_changes(body=body)


def _is_docstring(statement: cst.BaseStatement) -> bool:
    return (
        isinstance(statement, cst.SimpleStatementLine)
        and len(statement.body) == 1
        and isinstance(statement.body[0], cst.Expr)
        and isinstance(statement.body[0].value, cst.SimpleString | cst.ConcatenatedString)
    )


def _import_slot(body: Sequence[cst.BaseStatement]) -> int:
    """After the module's last top-level import before the class, else after its docstring."""
    slot = 1 if body and _is_docstring(body[0]) else 0
    for index, statement in enumerate(body):
        if isinstance(statement, cst.SimpleStatementLine) and any(
            isinstance(s, cst.Import | cst.ImportFrom) for s in statement.body
        ):
            slot = index + 1
    return slot


def imports_name(text: str, module: str) -> bool:
    """The module binds `module` at top level by `import module` (so `module.X` works)."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError):
        return False
    return any(
        isinstance(node, ast.Import)
        and any(a.name == module and a.asname is None for a in node.names)
        for node in tree.body
    )


def tidy(root: Path, before: str, after: str) -> str:
    """`after` with its changed lines formatted as the project under `root` formats them (ruff,
    when it uses ruff); in a project that does not, only the changed lines longer than
    LONG_LINE characters are wrapped (ruff's defaults), the rest left as generated."""
    if ruff_settings(root) is not None:
        return format_changed_lines(root, before, after)
    ruff = ruff_path()
    text = after
    for first, last in reversed(changed_ranges(before, after)):
        lines = text.splitlines()[first - 1 : last]
        if ruff is not None and any(len(line) > LONG_LINE for line in lines):
            text = format_range(ruff, [], text, first, last) or text
    return text
