"""ddp-save-every-rank: save on rank 0 only, then let every rank wait for the file."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.checks.ddp import SHARDING
from torchdoctor.agent.fixes.codemods.base import EXACT_RTOL, Codemod, SourceContext, method_call
from torchdoctor.agent.fixes.codemods.common import probe_symptom_gone
from torchdoctor.agent.fixes.models import FixKind, FixTarget, SmokeRun

_PROBE_RULE = "probe-ddp-every-rank-saves"


class DdpSaveEveryRankFix(Codemod):
    """Puts the flagged `torch.save(...)` statement under `if dist.get_rank() == 0:` and adds
    `dist.barrier()` after it, so no rank reads the file before rank 0 has written it. When the
    script does not always start a process group (it also runs as a single process), both are
    guarded by `dist.is_initialized()`. Training is untouched: the seeded loss trajectory must
    not move.

    Not applied under parameter sharding (FSDP, ZeRO, DeepSpeed): there every rank must take
    part in gathering the state dict, so the save needs a collective-aware rewrite."""

    rule = "ddp-save-every-rank"
    kind = FixKind.CORRECTNESS
    rtol = EXACT_RTOL
    summary = "save on rank 0 only, then dist.barrier()"

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        if any(token in ctx.source for token in SHARDING):
            return False
        statement = _save_statement(ctx, target)
        if statement is None:
            return False
        dist = ctx.alias_of("torch.distributed") or ctx.require_module("torch.distributed")
        always = _always_initialised(ctx)
        first = "" if always else f"not {dist}.is_initialized() or "
        indent = "    "
        code = ctx.code(statement.with_changes(leading_lines=[])).rstrip("\n")
        guarded = f"if {first}{dist}.get_rank() == 0:\n{indent}{code}\n"
        barrier = f"{dist}.barrier()\n"
        if not always:
            barrier = f"if {dist}.is_initialized():\n{indent}{barrier}"
        new = cst.parse_module(guarded + barrier).body
        ctx.substitute(statement, new[0].with_changes(leading_lines=statement.leading_lines))
        if not _barrier_follows(ctx, statement):
            ctx.insert_after(statement, [new[1]])
        return True

    def explain(self, source: str, target: FixTarget) -> str | None:
        if any(token in source for token in SHARDING):
            return (
                "parameters are sharded (FSDP/ZeRO/DeepSpeed): every rank must join the "
                "state-dict gather, so only the write itself may move under `rank == 0`"
            )
        return None

    def symptom_gone(self, before: SmokeRun, after: SmokeRun) -> tuple[bool, str]:
        """Only one rank writes each checkpoint."""
        return probe_symptom_gone(_PROBE_RULE, "several ranks wrote the same file", before, after)


def _save_statement(ctx: SourceContext, target: FixTarget) -> cst.SimpleStatementLine | None:
    """The line that is just `torch.save(...)` at the finding."""
    for line in ctx.find(cst.SimpleStatementLine, where=lambda s: ctx.line(s) == target.line):
        if len(line.body) != 1 or not isinstance(line.body[0], cst.Expr):
            continue
        call = line.body[0].value
        if isinstance(call, cst.Call) and ctx.qualname(call.func) == "torch.save":
            return line
    return None


def _always_initialised(ctx: SourceContext) -> bool:
    """`init_process_group(...)` runs on every path: a statement of a function body or of the
    module, not under an `if`."""
    for call in ctx.find(cst.Call):
        if (ctx.qualname(call.func) or "") != "torch.distributed.init_process_group":
            continue
        if not any(isinstance(anc, cst.If | cst.Try | cst.IfExp) for anc in ctx.ancestors(call)):
            return True
    return False


def _barrier_follows(ctx: SourceContext, statement: cst.SimpleStatementLine) -> bool:
    parent = ctx.parent(statement)
    body = list(parent.body) if isinstance(parent, cst.IndentedBlock | cst.Module) else []
    at = next((i for i, s in enumerate(body) if s is statement), None)
    if at is None or at + 1 >= len(body):
        return False
    return any(method_call(c, "barrier") for c in ctx.find(cst.Call, inside=body[at + 1]))
