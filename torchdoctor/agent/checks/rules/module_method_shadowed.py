"""module-method-shadowed: an nn.Module's own method hidden by an attribute of its name."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.models import Severity

_METHODS = frozenset(
    {
        "cuda",
        "cpu",
        "to",
        "train",
        "eval",
        "half",
        "float",
        "double",
        "bfloat16",
        "parameters",
        "named_parameters",
        "buffers",
        "modules",
        "children",
        "state_dict",
        "load_state_dict",
        "zero_grad",
        "apply",
        "requires_grad_",
    }
)
"""`nn.Module` methods that callers (and torch itself: `eval()` calls `self.train(False)`)
invoke on a model."""


def _data_module(ctx: ModuleContext, cls: ast.ClassDef, depth: int = 0) -> bool:
    """A Lightning `DataModule` (named like a module, not an `nn.Module`: its `self.train` is a
    split), directly or through this file's own bases."""
    for base in cls.bases:
        name = ast.unparse(base).rsplit(".", 1)[-1]
        if name.endswith("DataModule"):
            return True
        local = ctx.flow.classes.get(name)
        if (
            local is not None
            and local is not cls
            and depth < 8
            and _data_module(ctx, local, depth + 1)
        ):
            return True
    return False


class ModuleMethodShadowed(Rule):
    """Detects `self.cuda = cuda`, `self.train = is_train`, `self.parameters = params`, ... in
    a method of an `nn.Module` subclass: an instance attribute named after one of
    `nn.Module`'s methods.

    Why it matters: the attribute hides the method on that instance. `model.cuda()` then
    raises `TypeError: 'bool' object is not callable`; with `self.train` shadowed, `eval()`
    (which calls `self.train(False)`) fails the same way, and so does a parent's
    `model.eval()` reaching it; code that checks `if self.cuda:` reads a flag that `.to()`
    never updates.

    Not reported: classes that are not `nn.Module`s (a dataset's `self.train` split, a
    config's `self.cuda` flag, a Lightning `DataModule`); a class-level attribute; other
    names (`self.type`, `self.forward` rebound on purpose).

    Example:
        class MeanAggregator(nn.Module):
            def __init__(self, features, cuda=False):
                self.cuda = cuda

    Fix: another name (`self.use_cuda`), or none: read the device from a parameter
    (`next(self.parameters()).is_cuda`).
    """

    id = "module-method-shadowed"
    point = 1
    severity = Severity.MEDIUM
    title = "nn.Module method hidden by an attribute"
    items: ClassVar[tuple[str, ...]] = ("1.1",)

    def applies(self, ctx: ModuleContext) -> bool:
        return bool(ctx.flow.module_classes)

    def finish(self, ctx: ModuleContext) -> None:
        modules = ctx.flow.module_classes
        for name, cls in ctx.flow.classes.items():
            if name not in modules or _data_module(ctx, cls):
                continue
            for method in cls.body:
                if not isinstance(method, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for node in ast.walk(method):
                    if (
                        isinstance(node, ast.Attribute)
                        and isinstance(node.ctx, ast.Store)
                        and node.attr in _METHODS
                        and isinstance(node.value, ast.Name)
                        and node.value.id == "self"
                    ):
                        ctx.report(
                            self,
                            node,
                            f"`self.{node.attr}` hides nn.Module.{node.attr}() on every "
                            f"`{name}`: `model.{node.attr}(...)` then fails ('not callable'); "
                            "give the attribute another name",
                            data={"method": node.attr, "class": name},
                        )
