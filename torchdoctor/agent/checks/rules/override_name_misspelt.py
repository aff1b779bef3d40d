"""override-name-misspelt: a method meant to override a torch hook, under a near miss of
its name."""

from __future__ import annotations

import ast
from typing import Any, ClassVar

from torchdoctor.agent.checks.analysis.defuse import identifier
from torchdoctor.agent.checks.analysis.project import attribute_reads, publish_attribute_reads
from torchdoctor.agent.checks.analysis.spelling import near_miss
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.checks.patterns import class_methods, module_classes
from torchdoctor.agent.models import Severity

_MODULE = frozenset({"forward", "extra_repr", "reset_parameters"})
_HOOKS: tuple[tuple[str, frozenset[str]], ...] = (
    (
        "torch.distributions.",
        frozenset(
            {
                "entropy", "log_prob", "sample", "rsample", "cdf", "icdf", "enumerate_support",
                "expand", "mean", "mode", "variance", "stddev",
            }
        ),
    ),
    ("torch.utils.data.", frozenset({"__getitem__", "__len__", "__iter__"})),
    ("torch.optim.lr_scheduler.", frozenset({"get_lr", "step"})),
    ("torch.optim.", frozenset({"step", "zero_grad"})),
    ("torch.autograd.Function", frozenset({"forward", "backward", "setup_context"})),
    (
        "lightning",
        _MODULE
        | frozenset(
            {
                "training_step", "validation_step", "test_step", "predict_step",
                "configure_optimizers", "training_epoch_end", "validation_epoch_end",
                "on_train_epoch_end", "on_validation_epoch_end", "train_dataloader",
                "val_dataloader", "test_dataloader",
            }
        ),
    ),
)  # fmt: skip
"""Base classes by qualified-name prefix (`pytorch_lightning` and `lightning` both hold
"lightning"), and the methods torch (or the framework) calls on a subclass."""
_CANDIDATES = "override-name-misspelt:candidates"


class OverrideNameMisspelt(Rule):
    """Detects a method of a subclass of a torch class that torch calls back (`nn.Module`,
    a `torch.distributions` distribution, a `Dataset`, an optimizer or scheduler, an
    `autograd.Function`, a `LightningModule`) whose name is a near miss of one of those hooks
    (`entrop` for `entropy`, `foward` for `forward`, `__len` for `__len__`, `validation_steps`
    for `validation_step`) when the class does not define the hook itself and nothing in the
    module calls the misspelt name.

    Why it matters: the override never runs: the base class's method answers instead, with
    no error. ikostrikov/pytorch-a2c-ppo-acktr-gail's `FixedNormal.entrop` (summing the
    entropy over action dimensions) was dead code, so PPO's entropy bonus used per-dimension
    entropies until `67b0115`.

    Not reported: the hook's name behind leading underscores (`_reset_parameters`,
    `_forward`: a private helper by convention, as torch's `nn.MultiheadAttention` has one;
    `_reset_parameter` stays), a near-miss name some file of the project reads as an attribute
    (`dist.log_probs(actions)`: a helper on purpose, next to the hook `log_prob`), a class
    that also defines the hook (also by assignment in its body: `forward = _forward`), and
    classes with no torch base.

    Example:
        class FixedNormal(torch.distributions.Normal):
            def entrop(self):
                return super().entropy().sum(-1)

    Fix: spell the hook (`def entropy(self):`).
    """

    id = "override-name-misspelt"
    point = 1
    severity = Severity.HIGH
    title = "Override of a torch hook under a misspelt name"
    items: ClassVar[tuple[str, ...]] = ("1.1",)

    def finish(self, ctx: ModuleContext) -> None:
        publish_attribute_reads(ctx)  # every module: a caller of `.log_probs` may have no class
        modules = module_classes(ctx)
        candidates = []
        for cls in ctx.flow.nodes(ast.ClassDef):
            hooks = _hooks(ctx, cls, modules)
            if not hooks:
                continue
            methods = class_methods(cls)
            aliased = _class_level_names(cls)  # `forward = _forward`: the hook is defined
            for name, method in methods.items():
                if name in hooks:
                    continue
                meant = sorted(
                    h
                    for h in hooks
                    if h not in methods
                    and h not in aliased
                    and near_miss(name, h)
                    and not _private_variant(name, h)
                )
                found = (
                    ctx.finding(
                        self,
                        method,
                        f"`{cls.name}.{name}` is never called: the method torch calls on this "
                        f"class is `{meant[0]}`, a near miss of `{name}`, so the base class's "
                        f"`{meant[0]}` runs instead of this override; name it `{meant[0]}`",
                        data={"method": name, "hook": meant[0]},
                    )
                    if meant
                    else None
                )
                if found is not None:
                    candidates.append(found.model_dump(mode="json"))
        if candidates:
            ctx.facts[_CANDIDATES] = candidates

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        """A misspelt override is reported unless some file calls it by its name (a helper
        on purpose: `dist.log_probs(actions)` in another module)."""
        reads = attribute_reads(facts)
        return [
            RawFinding.model_validate(candidate)
            for module in facts.values()
            for candidate in module.get(_CANDIDATES, [])
            if candidate["data"]["method"] not in reads
        ]


def _hooks(ctx: ModuleContext, cls: ast.ClassDef, modules: set[str]) -> frozenset[str]:
    """The hooks torch calls on `cls`: a module's, unless its module base comes from another
    file under a name that does not say so, which may define `forward` itself
    (ImageCaptioning's `CaptionModel` dispatches to `_forward`)."""
    inherited = bool(cls.bases) and all(
        identifier(base) not in modules
        and not (ctx.qualname(base) or "").startswith("torch.")
        and not identifier(base).endswith("Module")
        for base in cls.bases
    )
    found: frozenset[str] = _MODULE if cls.name in modules and not inherited else frozenset()
    for base in cls.bases:
        qualname = ctx.qualname(base) or ""
        for prefix, hooks in _HOOKS:
            if qualname.startswith(prefix) or (prefix == "lightning" and prefix in qualname):
                found |= hooks
                break
    return found


def _private_variant(name: str, hook: str) -> bool:
    """`name` is the hook's name behind leading underscores (`_reset_parameters`, `_forward`):
    a private helper by convention (torch's own `nn.MultiheadAttention._reset_parameters`),
    not a slip of the hook's spelling."""
    return not hook.startswith("_") and name.startswith("_") and name.lstrip("_") == hook


def _class_level_names(cls: ast.ClassDef) -> set[str]:
    """Names a class body binds by assignment (`forward = _forward`, MadryLab's ResNet)."""
    return {
        target.id
        for stmt in cls.body
        if isinstance(stmt, ast.Assign | ast.AnnAssign)
        for target in (stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target])
        if isinstance(target, ast.Name)
    }
