"""checkpoint-too-often: `torch.save` on every training step."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import terminal_name
from torchdoctor.agent.models import Severity

_SAVES = frozenset({"torch.save", "safetensors.torch.save_file", "safetensors.torch.save_model"})


class CheckpointTooOften(Rule):
    """Detects a checkpoint written in the body of a training loop on every step (not under an
    `if`, such as `if step % 1000 == 0:` or `if val_loss < best:`).

    Why it matters: each save serialises every parameter (and often the optimizer state, twice
    the model's size for Adam) and synchronises the GPU; done every step it can dominate
    step time and disk I/O, and wears out storage, for checkpoints nobody will use.

    Example:
        for x, y in loader:
            ...
            optimizer.step()
            torch.save(model.state_dict(), "last.pt")

    Fix: save every N steps or once per epoch (`if step % save_every == 0:`), or only on
    improvement.
    """

    id = "checkpoint-too-often"
    point = 8
    severity = Severity.MEDIUM
    title = "Checkpoint saved every step"
    items: ClassVar[tuple[str, ...]] = ("8.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset({"save", "save_file", "save_model"})
    triggers = Triggers(("save",))

    def __init__(self) -> None:
        self.saves: list[ast.Call] = []

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if (
            terminal_name(node.func) in ("save", "save_file", "save_model")
            and ctx.call_qualname(node) in _SAVES
        ):
            self.saves.append(node)

    def finish(self, ctx: ModuleContext) -> None:
        if not self.saves or "backward" not in ctx.source:
            return
        for call in self.saves:
            loop = ctx.loops.loop_containing(call)
            if loop is None or loop.kind != "loop":
                continue
            guarded = False
            for anc in ctx.ancestors(call):
                if anc is loop.node:
                    break
                if isinstance(anc, ast.If):
                    guarded = True
                    break
            if not guarded:
                ctx.report(
                    self,
                    call,
                    "a checkpoint is written on every training step: save every N steps or "
                    "per epoch",
                )
