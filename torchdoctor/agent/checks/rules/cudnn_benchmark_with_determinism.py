"""cudnn-benchmark-with-determinism: benchmark mode switched on next to a determinism request."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_BENCHMARK = "torch.backends.cudnn.benchmark"
_DETERMINISTIC_FLAG = "torch.backends.cudnn.deterministic"
_DETERMINISTIC_CALL = "torch.use_deterministic_algorithms"


class CudnnBenchmarkWithDeterminism(Rule):
    """Detects `torch.backends.cudnn.benchmark = True` in the same function (or script) as
    a determinism request (`torch.backends.cudnn.deterministic = True`,
    `torch.use_deterministic_algorithms(True)`), on a path where both run.

    Why it matters: benchmark mode times several convolution algorithms on the first batches
    and keeps the fastest, which can differ from run to run (timing noise, other jobs on the
    GPU); PyTorch's reproducibility notes ask for `benchmark = False` alongside the
    determinism flags. With both set, the runs the user believes reproducible are not.

    A determinism request may be a run-time option named for it (`cudnn.deterministic =
    args.torch_deterministic`): benchmark mode set unconditionally defeats it whenever it is
    on.

    The two settings may be one call apart: the request in a function that then calls the one
    switching benchmark mode on (pytorch/examples' ImageNet script: `main` sets
    `cudnn.deterministic` when seeded, then calls `main_worker`, which sets `benchmark =
    True`), or in a local helper (`set_seed()`) called before `benchmark = True`.

    Not reported: the two settings in opposite branches (`if args.deterministic: ... else:
    cudnn.benchmark = True`), in unrelated functions, a later `benchmark = False` in the same
    scope, a benchmark flag computed at run time (`benchmark = not args.deterministic`), a
    helper's request called after `benchmark = True`, or, one call apart, a benchmark switch
    under a test of determinism or seeding (`if not args.deterministic:`).

    Example:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = True

    Fix: set `torch.backends.cudnn.benchmark = False` where determinism is requested (keep
    benchmark mode for runs that do not need to be reproducible).
    """

    id = "cudnn-benchmark-with-determinism"
    point = 5
    severity = Severity.MEDIUM
    title = "cuDNN benchmark mode defeats the determinism request"
    items: ClassVar[tuple[str, ...]] = ("5.1",)
    triggers = Triggers(("determinis",))

    def applies(self, ctx: ModuleContext) -> bool:
        return "benchmark" in ctx.source and "determinis" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        benchmarks: list[tuple[ast.Assign, bool]] = []
        requests: list[ast.AST] = []
        for node in ctx.flow.nodes(ast.Assign):
            for target in node.targets:
                qual = ctx.qualname(target)
                flag = node.value.value if isinstance(node.value, ast.Constant) else None
                if qual == _BENCHMARK and isinstance(flag, bool):
                    benchmarks.append((node, flag))
                elif qual == _DETERMINISTIC_FLAG and _requests(node.value):
                    requests.append(node)
        for call in ctx.flow.nodes(ast.Call):
            if ctx.flow.qualname_of(call) == _DETERMINISTIC_CALL and _switches_on(call):
                requests.append(call)
        for node, flag in benchmarks:
            if not flag or _turned_off_later(ctx, node, benchmarks):
                continue
            request = next((r for r in requests if _both_run(ctx, node, r)), None)
            where = ""
            if request is None:
                request, where = _request_one_call_away(ctx, node, requests)
            if request is None:
                continue
            ctx.report(
                self,
                node,
                "cuDNN benchmark mode is on although determinism is requested on line "
                f"{getattr(request, 'lineno', 0)}{where}: the algorithm chosen can differ "
                "between runs",
            )


def _request_one_call_away(
    ctx: ModuleContext, node: ast.Assign, requests: list[ast.AST]
) -> tuple[ast.AST | None, str]:
    """A determinism request one local call away from `benchmark = True`, on a path where both
    run: in a function that calls the benchmark's function after the request, or in a helper
    called before the benchmark. (None, "") when there is none, or when the benchmark switch
    sits under a test of determinism or seeding (`if not args.deterministic:`)."""
    if any(isinstance(anc, ast.If) and _names_determinism(anc.test) for anc in ctx.ancestors(node)):
        return None, ""
    scope = _scope(ctx, node)
    if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
        for site in ctx.calls.call_sites(scope):
            caller = _scope(ctx, site)
            for request in requests:
                if (
                    _scope(ctx, request) is caller
                    and getattr(request, "lineno", 0) < site.lineno
                    and _both_run(ctx, site, request)
                ):
                    name = getattr(caller, "name", "the script")
                    return request, f" (in `{name}`, before it calls `{scope.name}`)"
    body = scope.body if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef) else scope
    for site, helper in ctx.calls.callees(body):
        if site.lineno > node.lineno or not _both_run(ctx, node, site):
            continue
        for request in requests:
            if _scope(ctx, request) is helper:
                return request, f" (in `{helper.name}`, called on line {site.lineno})"
    return None, ""


def _names_determinism(test: ast.expr) -> bool:
    text = ast.unparse(test).lower()
    return "determinis" in text or "seed" in text or "reproduc" in text


def _switches_on(call: ast.Call) -> bool:
    mode = call.args[0] if call.args else next((k.value for k in call.keywords), None)
    return mode is not None and _requests(mode)


def _requests(value: ast.expr) -> bool:
    """`True`, or a run-time option named for determinism (`args.torch_deterministic`,
    cleanrl's scripts): benchmark mode set unconditionally defeats it whenever it is on."""
    if isinstance(value, ast.Constant):
        return value.value is True
    return (
        isinstance(value, ast.Name | ast.Attribute) and "determinis" in ast.unparse(value).lower()
    )


def _scope(ctx: ModuleContext, node: ast.AST) -> ast.AST:
    return ctx.enclosing_function(node) or ctx.tree


def _turned_off_later(
    ctx: ModuleContext, node: ast.Assign, benchmarks: list[tuple[ast.Assign, bool]]
) -> bool:
    scope = _scope(ctx, node)
    return any(
        not flag and other.lineno > node.lineno and _scope(ctx, other) is scope
        for other, flag in benchmarks
    )


def _both_run(ctx: ModuleContext, first: ast.AST, second: ast.AST) -> bool:
    """Same scope, and no `if` puts one in its body and the other in its `else`."""
    if _scope(ctx, first) is not _scope(ctx, second):
        return False
    branches = {id(a): a for a in ctx.ancestors(first) if isinstance(a, ast.If)}
    child = second
    for anc in ctx.ancestors(second):
        if id(anc) in branches and isinstance(anc, ast.If):
            return _branch(anc, child) == _branch(anc, _child_under(ctx, first, anc))
        child = anc
    return True


def _child_under(ctx: ModuleContext, node: ast.AST, ancestor: ast.AST) -> ast.AST:
    child = node
    for anc in ctx.ancestors(node):
        if anc is ancestor:
            return child
        child = anc
    return child


def _branch(node: ast.If, child: ast.AST) -> str:
    if child in node.orelse:
        return "else"
    return "test" if child is node.test else "body"
