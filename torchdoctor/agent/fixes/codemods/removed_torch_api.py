"""removed-torch-api: calls of removed torch functions -> their `torch.linalg` replacements."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext
from torchdoctor.agent.fixes.codemods.common import indexes_first
from torchdoctor.agent.fixes.models import FixKind, FixTarget


class RemovedTorchApiFix(Codemod):
    """The replacements whose meaning is the same once written out:

    - `torch.matrix_rank(A)` -> `torch.linalg.matrix_rank(A)` (no other argument: the old
      `symmetric` flag and tolerance have new names and meanings);
    - `x, _ = torch.solve(B, A)` and `torch.solve(B, A)[0]` -> `torch.linalg.solve(A, B)` (the
      arguments swap; the LU factor the old call also returned is not asked for);
    - `e, v = torch.symeig(A, eigenvectors=True)` -> `e, v = torch.linalg.eigh(A)` (both sort
      the eigenvalues ascending; a symmetric matrix has the same decomposition from either
      triangle), with `upper=False` -> `UPLO="L"` and the default `upper=True` -> `UPLO="U"`.

    `torch.lstsq` and `torch.eig` return differently shaped or complex results: left to a
    human, as is any other use of the removed calls' results."""

    rule = "removed-torch-api"
    kind = FixKind.CORRECTNESS
    summary = "call the torch.linalg replacement"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        name = target.data.get("name")
        for call in ctx.find(cst.Call, within=(target.line, target.end_line)):
            if ctx.qualname(call.func) != name:
                continue
            linalg = f"{ctx.require_module('torch')}.linalg"
            if name == "torch.matrix_rank":
                return _matrix_rank(ctx, call, linalg)
            if name == "torch.solve":
                return _solve(ctx, call, linalg)
            if name == "torch.symeig":
                return _symeig(ctx, call, linalg)
            return ctx.decline(f"`{name}`'s replacement returns a different result: by hand")
        return False


def _matrix_rank(ctx: SourceContext, call: cst.Call, linalg: str) -> bool:
    if len(call.args) != 1 or call.args[0].keyword is not None or call.args[0].star:
        return ctx.decline("the tolerance and symmetric arguments changed: by hand")
    ctx.substitute(call, call.with_changes(func=cst.parse_expression(f"{linalg}.matrix_rank")))
    return True


def _solve(ctx: SourceContext, call: cst.Call, linalg: str) -> bool:
    if len(call.args) != 2 or any(a.keyword is not None or a.star for a in call.args):
        return ctx.decline("torch.solve's arguments are not two positional ones")
    swapped = cst.Call(
        func=cst.parse_expression(f"{linalg}.solve"),
        args=[
            call.args[1].with_changes(comma=call.args[0].comma),
            call.args[0].with_changes(comma=cst.MaybeSentinel.DEFAULT),
        ],
    )
    parent = ctx.parent(call)
    if isinstance(parent, cst.Subscript) and indexes_first(parent):
        ctx.substitute(parent, swapped)
        return True
    unpacked = _unpacked_first(ctx, call)
    if unpacked is None:
        return ctx.decline("the (solution, LU) pair is used otherwise: by hand")
    assign, first = unpacked
    ctx.substitute(
        assign, assign.with_changes(targets=[cst.AssignTarget(target=first)], value=swapped)
    )
    return True


def _symeig(ctx: SourceContext, call: cst.Call, linalg: str) -> bool:
    vectors = next((a for a in call.args if a.keyword and a.keyword.value == "eigenvectors"), None)
    upper = next((a for a in call.args if a.keyword and a.keyword.value == "upper"), None)
    positional = [a for a in call.args if a.keyword is None]
    if (
        len(positional) != 1
        or positional[0].star
        or vectors is None
        or not (isinstance(vectors.value, cst.Name) and vectors.value.value == "True")
        or (upper is not None and not isinstance(upper.value, cst.Name))
    ):
        return ctx.decline("only symeig(A, eigenvectors=True) has the same result as eigh")
    if not _two_names_assigned(ctx, call):
        return ctx.decline("the (eigenvalues, eigenvectors) pair is used otherwise: by hand")
    lower = upper is not None and isinstance(upper.value, cst.Name) and upper.value.value == "False"
    uplo = '"L"' if lower else '"U"'
    replaced = cst.parse_expression(f"{linalg}.eigh(A, UPLO={uplo})")
    assert isinstance(replaced, cst.Call)
    ctx.substitute(
        call,
        replaced.with_changes(
            args=[positional[0].with_changes(comma=replaced.args[0].comma), replaced.args[1]]
        ),
    )
    return True


def _unpacked_first(
    ctx: SourceContext, call: cst.Call
) -> tuple[cst.Assign, cst.BaseAssignTargetExpression] | None:
    """`x, _ = call`: the assignment and `x`, when the second name is `_`-like (unused)."""
    assign = ctx.parent(call)
    if not (isinstance(assign, cst.Assign) and len(assign.targets) == 1):
        return None
    target = assign.targets[0].target
    if not (isinstance(target, cst.Tuple) and len(target.elements) == 2):
        return None
    first, second = target.elements[0].value, target.elements[1].value
    if not (isinstance(second, cst.Name) and second.value.startswith("_")):
        return None
    if not isinstance(first, cst.Name | cst.Attribute | cst.Subscript):
        return None
    return assign, first


def _two_names_assigned(ctx: SourceContext, call: cst.Call) -> bool:
    assign = ctx.parent(call)
    return (
        isinstance(assign, cst.Assign)
        and len(assign.targets) == 1
        and isinstance(assign.targets[0].target, cst.Tuple)
        and len(assign.targets[0].target.elements) == 2
    )
