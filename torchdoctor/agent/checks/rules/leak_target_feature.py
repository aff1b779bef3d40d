"""leak-target-feature: a feature column computed from the target, or the reverse."""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.leak_sink import find_sink, related_location
from torchdoctor.agent.checks.loops import walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_ROW_APPLIERS = frozenset({"apply", "map", "transform", "agg", "aggregate"})


@dataclass
class _Frame:
    """What one DataFrame name's statements say about its columns."""

    derived: dict[str, list[tuple[ast.Assign, set[str]]]] = field(default_factory=dict)
    targets: list[tuple[ast.stmt, str]] = field(default_factory=list)  # (stmt, column)
    features: list[tuple[ast.Assign, str, set[str], bool]] = field(default_factory=list)
    """(statement, X, columns, whether `columns` are the ones dropped rather than kept)"""


class LeakTargetFeature(Rule):
    """Detects target leakage between the columns of one DataFrame: a feature column
    computed from the target column (`df["flag"] = df.apply(lambda row: row["default"] * 2,
    axis=1)`, `df["x"] = df["label"].map(...)`) that stays among the features, or a target
    computed from a column that stays among the features (`df["label"] =
    df["price"].apply(lambda p: p > 100)` with `price` kept in `X`). Features are
    `X = df.drop(columns=[...])` (every column not dropped) or `X = df[[...]]`; the target is
    `y = df["label"]` or `df.pop("label")`. Reported where `X` trains, selects or evaluates a
    model, with the derivation as a related location.

    Why it matters: the model is given the answer. Scores are near perfect in validation and
    collapse in production, where the target (and what was computed from it) is unknown.

    Not reported: columns derived from other features only, a target re-encoded from itself
    (`df["y"] = df["y"].map({"yes": 1, "no": 0})`), source columns dropped from the features,
    frames the code never splits into features and a target.

    Example:
        df["risk"] = df.apply(lambda row: row["default"] * 2 + row["grade"], axis=1)
        X, y = df.drop(columns=["default"]), df["default"]
        model.fit(X, y)

    Fix: compute features only from what is known before the outcome; drop columns derived
    from the target (or the columns the target was derived from) from `X`.
    """

    id = "leak-target-feature"
    point = 3
    severity = Severity.HIGH
    title = "Feature derived from the target (target leakage)"
    items: ClassVar[tuple[str, ...]] = ("3.1",)
    triggers = Triggers(("drop", "pop(", "[["))

    def applies(self, ctx: ModuleContext) -> bool:
        source = ctx.source
        return "drop" in source or "pop(" in source or "[[" in source

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx) or ('["' not in ctx.source and "['" not in ctx.source):
            return
        for name, frame in _frames(ctx).items():
            for target in dict.fromkeys(column for _, column in frame.targets):
                for x_stmt, x, columns, dropped in frame.features:
                    if (target in columns) != dropped:
                        continue  # these features include the target itself: another bug
                    self._check(ctx, name, frame, target, x_stmt, x, columns, dropped)

    def _check(
        self,
        ctx: ModuleContext,
        frame_name: str,
        frame: _Frame,
        target: str,
        x_stmt: ast.Assign,
        x: str,
        columns: set[str],
        dropped: bool,
    ) -> None:
        leaks: list[tuple[ast.Assign, str]] = []
        for column, assignments in frame.derived.items():
            if column == target or column not in _kept(columns, dropped, column):
                continue
            for stmt, sources in assignments:
                if target in _closure(frame, sources, column):
                    leaks.append((stmt, f"`{column}` is computed from the target `{target}`"))
        for stmt, sources in frame.derived.get(target, []):
            for source in sorted(sources - {target}):
                if source in _kept(columns, dropped, source):
                    leaks.append(
                        (
                            stmt,
                            f"the target `{target}` is computed from `{source}`, "
                            "a column the features keep",
                        )
                    )
        if not leaks:
            return
        value = x_stmt.value
        sink = find_sink(ctx, value, {x}, set())
        where = sink if sink is not None else x_stmt
        first_stmt, first_reason = leaks[0]
        ctx.report(
            self,
            where,
            f"`{x}` (features of `{frame_name}`) leaks the target: {first_reason} "
            f"(line {first_stmt.lineno})",
            data={
                "features": x,
                "target": target,
                "related": [
                    related_location(ctx, stmt, f"where the leak starts: {reason}")
                    for stmt, reason in leaks
                ],
            },
        )


def _kept(columns: set[str], dropped: bool, column: str | None = None) -> set[str]:
    """The columns the features keep, as far as `column` is concerned."""
    if not dropped:
        return columns
    return set() if column is None or column in columns else {column}


def _closure(frame: _Frame, sources: set[str], start: str) -> set[str]:
    """Every column `sources` derive from, through the frame's derived columns."""
    seen = {start}
    stack = list(sources)
    found: set[str] = set()
    while stack:
        column = stack.pop()
        if column in seen:
            continue
        seen.add(column)
        found.add(column)
        for _, inner in frame.derived.get(column, []):
            stack.extend(inner)
    return found


def _frames(ctx: ModuleContext) -> dict[str, _Frame]:
    frames: dict[str, _Frame] = {}
    for stmt in ctx.flow.nodes(ast.Assign):
        if len(stmt.targets) != 1:
            continue
        target = stmt.targets[0]
        column = _column_of(target)
        if column is not None:  # df["C"] = ...
            frame_name, name = column
            sources = _read_columns(ctx, stmt.value, frame_name)
            if sources:
                frames.setdefault(frame_name, _Frame()).derived.setdefault(name, []).append(
                    (stmt, sources)
                )
            continue
        if not isinstance(target, ast.Name):
            continue
        picked = _column_of(stmt.value) or _popped(stmt.value)
        if picked is not None:  # y = df["T"] / y = df.pop("T")
            frames.setdefault(picked[0], _Frame()).targets.append((stmt, picked[1]))
            continue
        selection = _feature_columns(stmt.value)
        if selection is not None:
            frame_name, columns, dropped = selection
            frames.setdefault(frame_name, _Frame()).features.append(
                (stmt, target.id, columns, dropped)
            )
    return frames


def _column_of(expr: ast.expr) -> tuple[str, str] | None:
    """`df["C"]` -> ("df", "C")."""
    if (
        isinstance(expr, ast.Subscript)
        and isinstance(expr.value, ast.Name)
        and isinstance(expr.slice, ast.Constant)
        and isinstance(expr.slice.value, str)
    ):
        return expr.value.id, expr.slice.value
    return None


def _popped(expr: ast.expr) -> tuple[str, str] | None:
    if (
        isinstance(expr, ast.Call)
        and isinstance(expr.func, ast.Attribute)
        and expr.func.attr == "pop"
        and isinstance(expr.func.value, ast.Name)
        and len(expr.args) == 1
        and isinstance(expr.args[0], ast.Constant)
        and isinstance(expr.args[0].value, str)
    ):
        return expr.func.value.id, expr.args[0].value
    return None


def _strings(expr: ast.expr | None) -> set[str] | None:
    if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
        return {expr.value}
    if not isinstance(expr, ast.List | ast.Tuple):
        return None
    found: set[str] = set()
    for element in expr.elts:
        if not (isinstance(element, ast.Constant) and isinstance(element.value, str)):
            return None
        found.add(element.value)
    return found


def _feature_columns(expr: ast.expr) -> tuple[str, set[str], bool] | None:
    """`df.drop(columns=[...])`, `df.drop([...], axis=1)` -> (df, dropped, True);
    `df[["a", "b"]]` -> (df, kept, False)."""
    if isinstance(expr, ast.Subscript) and isinstance(expr.value, ast.Name):
        kept = _strings(expr.slice) if isinstance(expr.slice, ast.List) else None
        return (expr.value.id, kept, False) if kept else None
    if not (
        isinstance(expr, ast.Call)
        and isinstance(expr.func, ast.Attribute)
        and expr.func.attr == "drop"
        and isinstance(expr.func.value, ast.Name)
    ):
        return None
    keywords = {k.arg: k.value for k in expr.keywords}
    if "columns" in keywords:
        dropped = _strings(keywords["columns"])
    elif expr.args and _is_column_axis(
        keywords.get("axis", expr.args[1] if len(expr.args) > 1 else None)
    ):
        dropped = _strings(expr.args[0])
    else:
        return None
    return (expr.func.value.id, dropped, True) if dropped else None


def _is_column_axis(axis: ast.expr | None) -> bool:
    return isinstance(axis, ast.Constant) and axis.value in (1, "columns")


def _read_columns(ctx: ModuleContext, value: ast.expr, frame: str) -> set[str]:
    """Columns of `frame` an expression reads: `frame["S"]` anywhere in it, and `row["S"]`
    in a lambda applied to the frame (`frame.apply(lambda row: row["S"], axis=1)`)."""
    found: set[str] = set()
    for node in walk_tree(value):
        column = _column_of(node) if isinstance(node, ast.Subscript) else None
        if column is not None and column[0] == frame:
            found.add(column[1])
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _ROW_APPLIERS
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == frame
        ):
            for arg in node.args:
                if isinstance(arg, ast.Lambda) and arg.args.args:
                    row = arg.args.args[0].arg
                    found |= {
                        c[1]
                        for sub in walk_tree(arg.body)
                        if isinstance(sub, ast.Subscript)
                        and (c := _column_of(sub)) is not None
                        and c[0] == row
                    }
    return found
