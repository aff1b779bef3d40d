"""dataparallel-not-ddp: single-process `nn.DataParallel` for multi-GPU training."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
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
    visit_gate: ClassVar[tuple[str, ...]] = ("DataParallel",)

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if terminal_name(node.func) not in ("DataParallel",):
            return
        if ctx.call_qualname(node) in _DATA_PARALLEL:
            ctx.report(
                self,
                node,
                "nn.DataParallel drives all GPUs from one process and gathers on GPU 0: use "
                "DistributedDataParallel",
            )
