"""dataparallel-not-ddp: single-process `nn.DataParallel` for multi-GPU training."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import terminal_name
from torchdoctor.agent.models import Severity

_DATA_PARALLEL = frozenset(
    {
        "torch.nn.DataParallel",
        "torch.nn.parallel.DataParallel",
        "torch.nn.parallel.data_parallel.DataParallel",
    }
)


class DataParallelNotDdp(Rule):
    """Detects `nn.DataParallel(model)`.

    Why it matters: DataParallel runs every GPU from one Python process: it scatters the batch,
    replicates the model on every forward and gathers outputs on GPU 0, so the GIL and GPU 0
    become the bottleneck and scaling is poor; PyTorch recommends DistributedDataParallel even
    on a single machine.

    Example:
        model = nn.DataParallel(model).cuda()

    Fix: one process per GPU with `torch.nn.parallel.DistributedDataParallel` (launch with
    `torchrun --nproc-per-node=N`, use a `DistributedSampler`).
    """

    id = "dataparallel-not-ddp"
    point = 6
    severity = Severity.MEDIUM
    title = "nn.DataParallel instead of DDP"
    items: ClassVar[tuple[str, ...]] = ("6.8",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset({"DataParallel"})
    triggers = Triggers(("DataParallel",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if terminal_name(node.func) not in ("DataParallel",):
            return
        if ctx.call_qualname(node) in _DATA_PARALLEL and not _unwrapped_before_use(ctx, node):
            ctx.report(
                self,
                node,
                "nn.DataParallel drives all GPUs from one process and gathers on GPU 0: use "
                "DistributedDataParallel",
            )


def _unwrapped_before_use(ctx: ModuleContext, wrap: ast.Call) -> bool:
    """`model = nn.DataParallel(Net(args))`, `model.load_state_dict(torch.load(path))`, then
    only `model.module` handed on (`validate(model.module)`) or `model = model.module` before
    any forward (RAFT's demo and evaluation scripts): the wrapper gives the checkpoint's
    `module.` keys a home and never runs a batch. Up to that unwrap, every read of the name is
    an attribute of the wrapper other than `forward` (`.cuda()`, `.eval()`, `.module`), and one
    of them is `.module`; a bare read (`model(x)`, `Trainer(model)`, `return model`) is a
    use of DataParallel."""
    statement = ctx.parents.get(wrap)
    while isinstance(statement, ast.Attribute | ast.Call):  # `DataParallel(net).cuda()`
        statement = ctx.parents.get(statement)
    if not (
        isinstance(statement, ast.Assign)
        and len(statement.targets) == 1
        and isinstance(statement.targets[0], ast.Name)
    ):
        return False
    name = statement.targets[0].id
    scope = ctx.enclosing_function(wrap)
    body = scope.body if scope is not None else ctx.tree.body
    nodes = list(ast.walk(ast.Module(body=body, type_ignores=[])))
    unwraps = [
        node.lineno
        for node in nodes
        if isinstance(node, ast.Assign)
        and node.lineno > statement.lineno
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "module"
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == name
    ]
    end = min(unwraps, default=None)
    reads = [
        node
        for node in nodes
        if isinstance(node, ast.Name)
        and node.id == name
        and isinstance(node.ctx, ast.Load)
        and node.lineno > statement.lineno
        and (end is None or node.lineno <= end)
    ]
    attributes = [ctx.parents.get(node) for node in reads]
    return (
        bool(reads)
        and all(isinstance(a, ast.Attribute) and a.attr != "forward" for a in attributes)
        and any(isinstance(a, ast.Attribute) and a.attr == "module" for a in attributes)
    )
