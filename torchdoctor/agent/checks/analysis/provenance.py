"""How a file was written by `torch.save`: from a state_dict/tensors or a whole pickled module."""

from __future__ import annotations

import ast
from functools import cached_property
from typing import Literal

from torchdoctor.agent.checks.analysis.defuse import first_argument, kwarg
from torchdoctor.agent.checks.analysis.model_facts import ModelFacts
from torchdoctor.agent.checks.analysis.vocabulary import (
    NON_GRAD_TORCH,
)

SavedKind = Literal["weights", "module", "unknown"]
# torch functions whose result is a plain tensor; `torch.load` returns whatever was pickled
# (a whole module saved by `torch.save(model, f)` comes back as one), the others no tensor.
_TENSOR_RESULTS = (NON_GRAD_TORCH - {"load", "save", "device", "no_grad", "manual_seed"}) | {
    "squeeze", "unsqueeze", "cat", "concat", "stack", "flatten", "reshape", "transpose",
    "permute", "clone", "where", "abs", "exp", "log", "sqrt", "clamp", "matmul", "stft",
}  # fmt: skip
"""`torch.<fn>` calls that return a tensor: what they make, saved, loads weights-only (a
cache of features: `spec = torch.squeeze(spec, 0); torch.save(spec, spec_filename)`)."""


class SavedFiles(ModelFacts):
    """What `torch.save` wrote at a path, for the loads of the same module."""

    @cached_property
    def _saves(self) -> list[tuple[set[str], ast.expr]]:
        """Every `torch.save(obj, f)` as (path keys of f, obj)."""
        found: list[tuple[set[str], ast.expr]] = []
        if "save" not in self.ctx.source:
            return found
        for node in self.nodes(ast.Call):
            if self.qualname_of(node) == "torch.save":
                obj = first_argument(node, "obj")
                path = kwarg(node, "f") or (node.args[1] if len(node.args) > 1 else None)
                if obj is not None and path is not None:
                    found.append((self.path_keys(path), obj))
        return found

    def path_keys(self, expr: ast.expr) -> set[str]:
        """Texts that identify a file path: the expression, a literal, and what names hold."""
        keys = {ast.unparse(expr)}
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            keys.add(repr(expr.value))
        template = _template(expr)
        if template is not None:
            keys.add(template)
        for source in self.sources(expr):
            if source is not expr and not isinstance(source, ast.Name):
                keys.add(ast.unparse(source))
        return keys

    def saved_kind(self, path: ast.expr) -> SavedKind | None:
        """How the file at `path` was written by a `torch.save` in this module.

        'weights' when every matching save wrote a `state_dict()`, tensors or a dict of those;
        'module' when one wrote a whole module (or another pickled object); 'unknown' when a
        save matches but its object is not recognised; None when no save matches.
        """
        keys = self.path_keys(path)
        kinds = [self._object_kind(obj) for save_keys, obj in self._saves if save_keys & keys]
        if not kinds:
            return None
        if "module" in kinds:
            return "module"
        if all(k == "weights" for k in kinds):
            return "weights"
        return "unknown"

    def _counted_by_range(self, name: ast.Name) -> bool:
        """`name` is the counter of a loop around it over `range(...)`: an int."""
        node: ast.AST | None = self.ctx.parents.get(name)
        while node is not None and not isinstance(node, ast.FunctionDef | ast.Module):
            if (
                isinstance(node, ast.For)
                and isinstance(node.target, ast.Name)
                and node.target.id == name.id
                and isinstance(node.iter, ast.Call)
                and isinstance(node.iter.func, ast.Name)
                and node.iter.func.id == "range"
            ):
                return True
            node = self.ctx.parents.get(node)
        return False

    def _object_kind(self, obj: ast.expr, depth: int = 0) -> SavedKind:
        if depth > 3:
            return "unknown"
        if isinstance(obj, ast.Dict):
            kinds = [self._object_kind(v, depth + 1) for v in obj.values]
            if "module" in kinds:
                return "module"
            return "weights" if all(k == "weights" for k in kinds) else "unknown"
        if isinstance(obj, ast.Constant):
            return "weights"
        if isinstance(obj, ast.BinOp):  # `epoch + 1`: numbers of numbers, tensors of tensors
            kinds = [self._object_kind(side, depth + 1) for side in (obj.left, obj.right)]
            return "weights" if all(k == "weights" for k in kinds) else "unknown"
        if isinstance(obj, ast.Name) and self._counted_by_range(obj):
            return "weights"
        if isinstance(obj, ast.Call):
            func = obj.func
            if isinstance(func, ast.Attribute) and func.attr in (
                "state_dict",
                "item",
                "detach",
                "cpu",
                "clone",
            ):
                return "weights"
            qual = self.qualname_of(obj) or ""
            if qual.startswith("torch.") and qual.rsplit(".", 1)[-1] in _TENSOR_RESULTS:
                return "weights"
            if self.is_module_value(func) or (
                isinstance(func, ast.Name) and func.id in self.module_classes
            ):
                return "module"
            return "unknown"
        if isinstance(obj, ast.Name | ast.Attribute):
            # the binding that reaches the save when there is one (`expected = m.state_dict();
            # torch.save(expected, f)`, whatever `expected` is rebound to after)
            values = (
                self.reaching_or_all(obj) if isinstance(obj, ast.Name) else self.definitions(obj)
            )
            kinds = [self._object_kind(v, depth + 1) for v in values]
            if "module" in kinds:
                return "module"
            if kinds and all(k == "weights" for k in kinds):
                return "weights"  # `crt_net = model.state_dict()`: its binding, not its name
            return "module" if self.is_module_value(obj) else "unknown"
        return "unknown"


def _template(path: ast.expr) -> str | None:
    """The file-name template a formatted path fills in: the files `model_fname % (epoch +
    1)` writes are those `model_fname % args.epochs` reads (one family, saved alike)."""
    if (
        isinstance(path, ast.BinOp)
        and isinstance(path.op, ast.Mod)
        and isinstance(path.left, ast.Name | ast.Attribute | ast.Constant)
    ):
        return f"template:{ast.unparse(path.left)}"
    if (
        isinstance(path, ast.Call)
        and isinstance(path.func, ast.Attribute)
        and path.func.attr == "format"
        and isinstance(path.func.value, ast.Name | ast.Attribute | ast.Constant)
    ):
        return f"template:{ast.unparse(path.func.value)}"
    return None
