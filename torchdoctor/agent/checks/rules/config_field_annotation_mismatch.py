"""config-field-annotation-mismatch: a config field's type annotation contradicts its default."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import kwarg
from torchdoctor.agent.models import Severity


class ConfigFieldAnnotationMismatch(Rule):
    """Detects a class-level field (a dataclass, pydantic or attrs config, a NamedTuple) whose
    annotation contradicts its literal default: `policy_lr: bool = 3e-5`, `dropout: bool =
    0.1`, `warmup: bool = 500`, `lr: int = 3e-4`.

    Why it matters: the parsers that build these configs from the command line or a YAML
    file (pyrallis, tyro, simple-parsing, HfArgumentParser, jsonargparse, pydantic) convert
    each value with the annotation, not the default: `--policy_lr 1e-4` becomes `True` (or
    is refused), `--lr 0.001` is refused as an int, and a sweep over the field trains every
    run with the same value. The default alone hides it until someone sets the option.
    corl-team/CORL fixed exactly this (`7e3077d`, "cql takes learning rate as bool":
    `policy_lr: bool = 3e-5` and `qf_lr: bool = 3e-4` -> `float`).

    Also reported: a command-line option parsed with `type=int` whose default is a fraction
    (`add_argument("--dp_ratio", type=int, default=0.2)`): `--dp_ratio 0.5` is refused.

    Not reported: `bool` fields defaulting to 0 or 1, `int` fields with a whole float
    default (`steps: int = 1e6`), `Optional[...]` defaults of None, string defaults (OmegaConf
    interpolations), annotations other than `bool`/`int` (and their `Optional` forms),
    function parameters.

    Example:
        @dataclass
        class TrainConfig:
            policy_lr: bool = 3e-5

    Fix: annotate the type the value has: `policy_lr: float = 3e-5`.
    """

    id = "config-field-annotation-mismatch"
    point = 9
    severity = Severity.HIGH
    title = "Config field annotated with the wrong type"
    items: ClassVar[tuple[str, ...]] = ("9.3",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.ClassDef, ast.Call)
    call_names: ClassVar[frozenset[str]] = frozenset({"add_argument"})
    triggers = Triggers(("bool", "int"))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        if isinstance(node, ast.Call):
            self._check_option(node, ctx)
            return
        assert isinstance(node, ast.ClassDef)
        for statement in node.body:
            if not (
                isinstance(statement, ast.AnnAssign)
                and isinstance(statement.target, ast.Name)
                and statement.value is not None
            ):
                continue
            annotated = _annotated_type(statement.annotation)
            default = _number(statement.value)
            if annotated is None or default is None or not _contradicts(annotated, default):
                continue
            kind = "float" if isinstance(default, float) else "int"
            ctx.report(
                self,
                statement,
                f"`{statement.target.id}` is annotated `{annotated}` but defaults to "
                f"{ast.unparse(statement.value)} (a {kind}): config parsers convert a value "
                f"given for it with `{annotated}`, so setting it from the command line or a "
                f"file does not give that number. Annotate it `{kind}`.",
            )

    def _check_option(self, call: ast.Call, ctx: ModuleContext) -> None:
        """`add_argument("--lr", type=int, default=1e-3)`: the option converts with `int`."""
        converter = kwarg(call, "type")
        given = kwarg(call, "default")
        if not (isinstance(converter, ast.Name) and converter.id == "int") or given is None:
            return
        if "int" in ctx.flow.functions or "int" in ctx.imports.aliases:
            return  # the module defines or imports its own `int`
        default = _number(given)
        if default is None or not _contradicts("int", default):
            return
        names = [a.value for a in call.args if isinstance(a, ast.Constant)]
        option = next((n for n in names if isinstance(n, str)), "the option")
        ctx.report(
            self,
            call,
            f"`{option}` is parsed with type=int but defaults to {ast.unparse(given)}: a "
            "fraction given on the command line is refused (`invalid int value`), so the "
            "option can only keep its default or be set to whole numbers. Use type=float.",
        )


def _annotated_type(annotation: ast.expr) -> str | None:
    """'bool' or 'int' for `bool`, `int`, `Optional[bool]`, `bool | None`; None otherwise."""
    if isinstance(annotation, ast.Name) and annotation.id in ("bool", "int"):
        return annotation.id
    if isinstance(annotation, ast.Constant) and annotation.value in ("bool", "int"):
        return str(annotation.value)
    if isinstance(annotation, ast.Subscript):
        holder = annotation.value
        name = holder.attr if isinstance(holder, ast.Attribute) else getattr(holder, "id", "")
        if name == "Optional":
            return _annotated_type(annotation.slice)
        return None
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
        sides = (annotation.left, annotation.right)
        if any(isinstance(s, ast.Constant) and s.value is None for s in sides):
            other = next(s for s in sides if not (isinstance(s, ast.Constant) and s.value is None))
            return _annotated_type(other)
    return None


def _number(value: ast.expr) -> int | float | None:
    """The literal int or float `value` is (signs included), never a bool."""
    sign = 1
    if isinstance(value, ast.UnaryOp) and isinstance(value.op, ast.USub | ast.UAdd):
        sign = -1 if isinstance(value.op, ast.USub) else 1
        value = value.operand
    if (
        isinstance(value, ast.Constant)
        and isinstance(value.value, int | float)
        and not isinstance(value.value, bool)
    ):
        return sign * value.value
    return None


def _contradicts(annotated: str, default: int | float) -> bool:
    if annotated == "bool":
        return isinstance(default, float) or default not in (0, 1)
    return isinstance(default, float) and not default.is_integer()
