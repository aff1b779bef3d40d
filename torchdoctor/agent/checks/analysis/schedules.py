"""Which learning-rate schedules are hand-written: a project's own class that sets the
optimizer's values itself, as opposed to a `torch.optim.lr_scheduler` class.

The order rule (scheduler after optimizer) is torch's contract: its schedulers advance to the
next value on `step()`. A hand-written schedule (I-JEPA's `WarmupCosineSchedule`, a
`CosineWDSchedule` for weight decay) writes `group["lr"]` for the step it is called at, and its
authors call it before `optimizer.step()` on purpose.
"""

from __future__ import annotations

import ast
from typing import TYPE_CHECKING

from torchdoctor.agent.checks.loops import walk_tree

if TYPE_CHECKING:
    from torchdoctor.agent.checks.base import ModuleContext

_SCHEDULED_KEYS = frozenset({"lr", "weight_decay", "momentum"})
_MAX_BASES = 4


def hand_written_schedule(ctx: ModuleContext, cls: ast.ClassDef) -> bool:
    """`cls` (or a local base) has a `step` method, the class or its local bases write an
    optimizer value into a param group (`group["lr"] = new_lr`), and nothing it derives from
    is outside this module (a base imported from torch or elsewhere may be torch's
    `LRScheduler`, whose contract holds)."""
    classes = ctx.flow.classes
    chain = [cls]
    seen: list[ast.ClassDef] = []
    while chain and len(seen) <= _MAX_BASES:
        current = chain.pop()
        seen.append(current)
        for base in current.bases:
            if isinstance(base, ast.Name) and base.id in classes:
                chain.append(classes[base.id])
            elif not (isinstance(base, ast.Name) and base.id == "object"):
                return False
    if chain:
        return False  # deeper than followed: not known
    has_step = any(
        isinstance(s, ast.FunctionDef) and s.name == "step" for c in seen for s in c.body
    )
    return has_step and any(_writes_a_scheduled_value(c) for c in seen)


def _writes_a_scheduled_value(cls: ast.ClassDef) -> bool:
    """`param_group["lr"] = value` (or `*=`, `+=`) somewhere in the class."""
    for node in walk_tree(cls):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AugAssign):
            targets = [node.target]
        for target in targets:
            if (
                isinstance(target, ast.Subscript)
                and isinstance(target.slice, ast.Constant)
                and target.slice.value in _SCHEDULED_KEYS
            ):
                return True
    return False


def hand_written_schedules(ctx: ModuleContext) -> list[ast.ClassDef]:
    """This module's classes that are hand-written schedules (for the project pass)."""
    text = ctx.source
    if "def step" not in text or not any(
        f'"{k}"' in text or f"'{k}'" in text for k in _SCHEDULED_KEYS
    ):
        return []
    return [cls for cls in ctx.flow.classes.values() if hand_written_schedule(ctx, cls)]
