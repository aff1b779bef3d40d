"""checkpoint-incomplete: a training checkpoint without the optimizer state."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.vocabulary import OPTIMIZERS
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import nodes_of
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import terminal_name
from torchdoctor.agent.models import Severity

_SAVE = frozenset({"torch.save", "lightning.fabric.Fabric.save"})


class CheckpointIncomplete(Rule):
    """Detects, in a module that trains, `torch.save({...})` of a dictionary that holds the
    model's state but no optimizer state (no key mentioning `optim`).

    Why it matters: a run resumed from it restarts Adam's moments and momentum from zero (and
    the scheduler from its first value), so the resumed run diverges from the uninterrupted one
    and loss spikes after every restart; results are not reproducible across preemptions.

    Example:
        torch.save({"epoch": epoch, "model": model.state_dict()}, "ckpt.pt")

    Fix: save everything needed to resume: `{"model": ..., "optimizer": optimizer.state_dict(),
    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
    "rng": torch.get_rng_state()}`.
    """

    id = "checkpoint-incomplete"
    point = 5
    severity = Severity.MEDIUM
    title = "Checkpoint lacks optimizer state"
    items: ClassVar[tuple[str, ...]] = ("5.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset({"save"})
    triggers = Triggers(("save",))

    def __init__(self) -> None:
        self.saves: list[ast.Call] = []

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if terminal_name(node.func) not in ("save",):
            return
        if node.args and isinstance(node.args[0], ast.Dict) and ctx.call_qualname(node) in _SAVE:
            self.saves.append(node)

    def finish(self, ctx: ModuleContext) -> None:
        if not self.saves or not self._trains(ctx):
            return
        for call in self.saves:
            assert isinstance(call.args[0], ast.Dict)
            keys = [
                k.value.lower()
                for k in call.args[0].keys
                if isinstance(k, ast.Constant) and isinstance(k.value, str)
            ]
            if None in call.args[0].keys or len(keys) != len(call.args[0].keys):
                continue  # `**extra` or computed keys: cannot tell
            has_model = any("model" in k or "state_dict" in k or "net" in k for k in keys)
            if has_model and not any("optim" in k for k in keys):
                ctx.report(
                    self,
                    call,
                    "this checkpoint has the model but not the optimizer state: a resumed run "
                    "restarts the optimizer from scratch",
                )

    @staticmethod
    def _trains(ctx: ModuleContext) -> bool:
        if ctx.loops.training_loops:
            return True
        return any(
            isinstance(n, ast.Call) and ctx.call_qualname(n) in OPTIMIZERS
            for n in nodes_of(ctx, ast.Call)
        )
