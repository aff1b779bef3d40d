"""A small def-use analysis over one module: which expressions a name may hold.

Scopes are functions (and the module). A name read in a function resolves to the assignments
in that function, then to the module's. `self.x` resolves to every `self.x = ...` in the class.
A call to a function defined in the module resolves to what that function returns. This is
flow-insensitive by design: rules ask "may this value come from X?", and a may-answer over a
module is what lets them see a model built in one function and trained in another.

On top of the def-use tables sit the questions the rules ask of a value:
- `graph_origin`: is this tensor still attached to the autograd graph (a loss or a model output
  not passed through `.item()`/`.detach()`/`float()`, not computed under `no_grad`)?
- `held_out_kind`: does this value derive from the test/validation split?
- `producers`: which calls produce this value through shape-preserving steps (softmax, sigmoid)?
- `saved_kind`: was the file at this path written by `torch.save` from a `state_dict()`/tensors
  or from a whole pickled module?
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Collection, Iterable, Iterator
from functools import cached_property
from typing import TYPE_CHECKING, Literal, TypeVar, cast

from torchdoctor.agent.checks.analysis.gradmode import grad_may_be_off
from torchdoctor.agent.checks.analysis.vocabulary import (
    AGGREGATING_BUILTINS,
    DETACHING_BUILTINS,
    DETACHING_METHODS,
    LOSS_FUNCTIONS,
    MODEL_FACTORY_PREFIXES,
    NN_MODULE_BASES,
    NON_GRAD_TORCH,
    PASSTHROUGH_FUNCTIONS,
    PASSTHROUGH_METHODS,
)
from torchdoctor.agent.checks.loops import is_periodic_guard, local_callee, walk_scope

if TYPE_CHECKING:
    from torchdoctor.agent.checks.base import ModuleContext

ScopeNode = ast.Module | ast.FunctionDef | ast.AsyncFunctionDef
FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef
GraphOrigin = Literal["loss", "output"]
_N = TypeVar("_N", bound=ast.AST)
SavedKind = Literal["weights", "module", "unknown"]
_MAX_DEPTH = 8
_MAX_VISITS = 400

_MODEL_NAME = re.compile(
    r"(^|_)(model|net|network|encoder|decoder|classifier|backbone|generator|discriminator|"
    r"transformer)s?$|^(model|net)\d*$",
    re.IGNORECASE,
)
_LOSS_NAME = re.compile(r"loss|criterion", re.IGNORECASE)

_HELD_OUT_TOKENS = {
    "test": "test",
    "tst": "test",
    "holdout": "test",
    "heldout": "test",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "eval": "val",
}
_NOT_DATA_TOKENS = frozenset(
    {
        "freq",
        "interval",
        "every",
        "size",
        "ratio",
        "frac",
        "fraction",
        "pct",
        "percent",
        "num",
        "n",
        "count",
        "steps",
        "epochs",
        "batch",
        "bs",
        "split",
        "splits",
        "mode",
        "only",
        "case",
        "cases",
        "time",
        "func",
        "fn",
        "step",
        "period",
        "flag",
        "enabled",
        "dir",
        "path",
        "file",
        "id",
        "ids",
        "kwargs",
        "args",
        "config",
        "cfg",
        "opts",
        "params",
        "settings",
        "name",
        "names",
        "collate",
        "transform",
        "transforms",
        "fmt",
        "print",
        "verbose",
    }
)
_DATA_SUFFIXES = (
    "loader",
    "set",
    "data",
    "dataset",
    "ds",
    "dl",
    "iter",
    "x",
    "y",
    "images",
    "labels",
    "df",
    "features",
    "targets",
)
_NON_DATA_KEYWORDS = frozenset(
    {
        "collate_fn",
        "transform",
        "target_transform",
        "transforms",
        "batch_size",
        "num_workers",
        "shuffle",
        "sampler",
        "batch_sampler",
        "pin_memory",
        "drop_last",
        "device",
        "dtype",
        "worker_init_fn",
        "generator",
        "callbacks",
        "model",
        "optimizer",
        "criterion",
        "loss_fn",
        "scheduler",
        "random_state",
        "test_size",
        "train_size",
        "stratify",
    }
)
_HELD_OUT_SPLIT_VALUES = frozenset({"test", "val", "valid", "validation", "eval", "holdout", "dev"})
_TOKEN_SPLIT = re.compile(r"[^A-Za-z]+|(?<=[a-z])(?=[A-Z])")
SPLIT_FUNCTIONS = frozenset(
    {
        "sklearn.model_selection.train_test_split",
        "torch.utils.data.random_split",
        "torch.utils.data.dataset.random_split",
    }
)
_SPLIT_SIMPLE_NAMES = frozenset({"train_test_split", "random_split"})


def _target_names(target: ast.expr) -> Iterator[tuple[str, ast.expr]]:
    """Names bound by an assignment target, paired with the target node."""
    if isinstance(target, ast.Name):
        yield target.id, target
    elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name):
        yield f"{target.value.id}.{target.attr}", target
    elif isinstance(target, ast.Tuple | ast.List):
        for elt in target.elts:
            yield from _target_names(elt)
    elif isinstance(target, ast.Starred):
        yield from _target_names(target.value)


def identifier(expr: ast.AST) -> str:
    """`self.model` -> 'model'; `crit` -> 'crit'; `model.forward` -> 'forward'."""
    if isinstance(expr, ast.Attribute):
        return expr.attr
    if isinstance(expr, ast.Name):
        return expr.id
    return ""


def kwarg(call: ast.Call, name: str) -> ast.expr | None:
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def first_argument(call: ast.Call, name: str) -> ast.expr | None:
    """The argument passed as keyword `name` or first positionally."""
    found = kwarg(call, name)
    if found is not None:
        return found
    if call.args and not isinstance(call.args[0], ast.Starred):
        return call.args[0]
    return None


def module_level(tree: ast.Module) -> list[ast.stmt]:
    """The module's own statements, without the bodies of its functions and classes."""
    return [
        s
        for s in tree.body
        if not isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    ]


def held_out_name_kind(name: str) -> str | None:
    """'X_test' -> 'test', 'valloader' -> 'val', 'val_freq' -> None, 'latest' -> None."""
    tokens = [t.lower() for t in _TOKEN_SPLIT.split(name) if t]
    if any(t in _NOT_DATA_TOKENS for t in tokens):
        return None
    for token in tokens:
        if token in _HELD_OUT_TOKENS:
            return _HELD_OUT_TOKENS[token]
        for prefix in ("test", "val", "valid", "eval"):
            if token.startswith(prefix) and token[len(prefix) :] in _DATA_SUFFIXES:
                return _HELD_OUT_TOKENS[prefix]
        for suffix in ("test", "val"):
            if token.endswith(suffix) and token[: -len(suffix)] in _DATA_SUFFIXES:
                return _HELD_OUT_TOKENS[suffix]
    return None


_BINDING_NODES: tuple[type[ast.AST], ...] = (
    ast.Assign,
    ast.AnnAssign,
    ast.AugAssign,
    ast.NamedExpr,
    ast.For,
    ast.AsyncFor,
    ast.comprehension,
    ast.withitem,
)


def _binding_pairs(node: ast.AST) -> Iterator[tuple[ast.expr, ast.expr]]:
    """(target, value) pairs a binding statement creates; `a, b = x, y` pairs element-wise."""
    if isinstance(node, ast.Assign):
        for t in node.targets:
            yield from _element_pairs(t, node.value)
    elif isinstance(node, ast.AnnAssign | ast.AugAssign | ast.NamedExpr):
        if node.value is not None:
            yield node.target, node.value
    elif isinstance(node, ast.For | ast.AsyncFor | ast.comprehension):
        yield node.target, node.iter
    elif isinstance(node, ast.withitem) and node.optional_vars is not None:
        yield node.optional_vars, node.context_expr


def _element_pairs(target: ast.expr, value: ast.expr) -> Iterator[tuple[ast.expr, ast.expr]]:
    if (
        isinstance(target, ast.Tuple | ast.List)
        and isinstance(value, ast.Tuple | ast.List)
        and len(target.elts) == len(value.elts)
        and not any(isinstance(e, ast.Starred) for e in [*target.elts, *value.elts])
    ):
        for t, v in zip(target.elts, value.elts, strict=True):
            yield from _element_pairs(t, v)
    else:
        yield target, value


def _mode_method(call: ast.Call) -> str | None:
    """'eval' for `.eval()`/`.train(False)`, 'train' for `.train()`/`.train(True)`, else None."""
    func = call.func
    if not isinstance(func, ast.Attribute):
        return None
    if func.attr == "train":
        return "eval" if call.args and _is_false(call.args[0]) else "train"
    if func.attr == "eval" and not call.args:
        return "eval"
    return None


def _is_false(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


class DataFlow:
    def __init__(self, ctx: ModuleContext) -> None:
        self.ctx = ctx
        self._origin_memo: dict[int, GraphOrigin | None] = {}
        self._reaching: dict[str, frozenset[str]] = {}
        self._qualnames: dict[int, str | None] = {}

    # ---- node index --------------------------------------------------------------------------

    @cached_property
    def _index(self) -> dict[type[ast.AST], list[ast.AST]]:
        """Every node of the module grouped by type, from the engine's single walk."""
        return self.ctx.nodes_by_type()

    def qualname_of(self, call: ast.Call) -> str | None:
        """`ctx.call_qualname`, memoised: several rules resolve the same calls."""
        key = id(call)
        if key not in self._qualnames:
            self._qualnames[key] = self.ctx.call_qualname(call)
        return self._qualnames[key]

    def imports(self, *prefixes: str) -> bool:
        """Whether the module imports something under one of `prefixes` ('torch', 'sklearn')."""
        return any(
            target == prefix or target.startswith(prefix + ".")
            for target in self.ctx.imports.aliases.values()
            for prefix in prefixes
        )

    @cached_property
    def _loads(self) -> dict[str, list[ast.Name]]:
        found: dict[str, list[ast.Name]] = {}
        for name in self.nodes(ast.Name):
            if isinstance(name.ctx, ast.Load):
                found.setdefault(name.id, []).append(name)
        return found

    def reads_of(self, name: str) -> list[ast.Name]:
        """Every place the module reads the plain name `name`."""
        return self._loads.get(name, [])

    @cached_property
    def _calls_by_name(self) -> dict[str, list[ast.Call]]:
        found: dict[str, list[ast.Call]] = {}
        for call in self.nodes(ast.Call):
            found.setdefault(identifier(call.func), []).append(call)
        return found

    def calls_matching(self, pattern: re.Pattern[str]) -> list[ast.Call]:
        """Calls whose callee's last name part matches `pattern` (tested once per name)."""
        return self.calls_named(n for n in self._calls_by_name if pattern.search(n))

    def calls_named(self, names: Iterable[str]) -> list[ast.Call]:
        """Calls whose callee's last name part is one of `names` (`x.append(...)`: 'append')."""
        return [call for name in set(names) for call in self._calls_by_name.get(name, [])]

    def calls_to(self, qualnames: Collection[str]) -> list[ast.Call]:
        """Calls that resolve to one of `qualnames`, however imported or aliased."""
        names = {q.rsplit(".", 1)[-1] for q in qualnames}
        names |= {a for a, target in self.ctx.imports.aliases.items() if target in qualnames}
        return [c for c in self.calls_named(names) if self.qualname_of(c) in qualnames]

    def nodes(self, kind: type[_N]) -> list[_N]:
        """All nodes of exactly type `kind` in the module (rules use this, not `ast.walk`)."""
        return cast(list[_N], self._index.get(kind, []))

    def _scope_key(self, node: ast.AST) -> ScopeNode | None:
        """The function (or module) whose local names `node` binds; None inside a class body
        or a lambda, whose names rules do not track."""
        for anc in self.ctx.ancestors(node):
            if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef):
                return anc
            if isinstance(anc, ast.ClassDef | ast.Lambda):
                return None
        return self.ctx.tree

    # ---- def-use tables -------------------------------------------------------------------

    @cached_property
    def _tables(
        self,
    ) -> tuple[
        dict[int, dict[str, list[ast.expr]]],
        dict[tuple[int, str], list[tuple[ast.expr, int, int]]],
    ]:
        """(scope id -> name -> assigned values, (scope id, name) -> tuple unpackings).

        Unpackings are recorded for assignments only: `for x, y in loader` binds elements of
        one iterable, while `a, b = f()` binds different parts of one result."""
        bindings: dict[int, dict[str, list[ast.expr]]] = {id(self.ctx.tree): {}}
        unpacked: dict[tuple[int, str], list[tuple[ast.expr, int, int]]] = {}
        for kind in _BINDING_NODES:
            for node in self.nodes(kind):
                scope = self._scope_key(node)
                if scope is None:
                    continue
                table = bindings.setdefault(id(scope), {})
                for target, value in _binding_pairs(node):
                    for name, _ in _target_names(target):
                        table.setdefault(name, []).append(value)
                    iterated = isinstance(node, ast.For | ast.AsyncFor | ast.comprehension)
                    if isinstance(target, ast.Tuple | ast.List) and not iterated:
                        for position, elt in enumerate(target.elts):
                            for name, _ in _target_names(elt):
                                unpacked.setdefault((id(scope), name), []).append(
                                    (value, position, len(target.elts))
                                )
        return bindings, unpacked

    @property
    def _scope_bindings(self) -> dict[int, dict[str, list[ast.expr]]]:
        """scope node id -> name -> assigned value expressions (tuple unpacking kept whole)."""
        return self._tables[0]

    @property
    def _unpacked_by_name(self) -> dict[tuple[int, str], list[tuple[ast.expr, int, int]]]:
        """(scope id, name) -> every `(value, position, arity)` unpacking that binds it."""
        return self._tables[1]

    @cached_property
    def _self_attributes(self) -> dict[str, list[ast.expr]]:
        """`self.x` -> values assigned anywhere in the module's methods."""
        merged: dict[str, list[ast.expr]] = {}
        for table in self._scope_bindings.values():
            for name, values in table.items():
                if name.startswith("self."):
                    merged.setdefault(name, []).extend(values)
        return merged

    @cached_property
    def functions(self) -> dict[str, list[FunctionNode]]:
        found: dict[str, list[FunctionNode]] = {}
        defs: list[FunctionNode] = [*self.nodes(ast.FunctionDef), *self.nodes(ast.AsyncFunctionDef)]
        for fn in defs:
            found.setdefault(fn.name, []).append(fn)
        return found

    @cached_property
    def _returns(self) -> dict[str, list[ast.expr]]:
        result: dict[str, list[ast.expr]] = {}
        for node in self.nodes(ast.Return):
            scope = self._scope_key(node)
            if node.value is not None and isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
                result.setdefault(scope.name, []).append(node.value)
        return result

    @cached_property
    def classes(self) -> dict[str, ast.ClassDef]:
        return {n.name: n for n in self.nodes(ast.ClassDef)}

    def module_inits(self) -> Iterator[tuple[str, ast.FunctionDef]]:
        """(class name, `__init__`) of the module's `nn.Module` subclasses, by class name."""
        for name in sorted(self.module_classes):
            for stmt in self.classes[name].body:
                if isinstance(stmt, ast.FunctionDef) and stmt.name == "__init__":
                    yield name, stmt

    @cached_property
    def module_classes(self) -> set[str]:
        """Local classes that are `nn.Module`s, directly or through local bases."""
        found: set[str] = set()
        changed = True
        while changed:
            changed = False
            for cls in self.classes.values():
                if cls.name in found:
                    continue
                for base in cls.bases:
                    qual = self.ctx.qualname(base) or ""
                    simple = identifier(base)
                    if qual in NN_MODULE_BASES or simple in found or simple.endswith("Module"):
                        found.add(cls.name)
                        changed = True
                        break
        return found

    @cached_property
    def callers(self) -> dict[str, list[ast.Call]]:
        """Local function name -> the calls in the module that may reach it."""
        found: dict[str, list[ast.Call]] = {}
        names = set(self.functions)
        for node in self.nodes(ast.Call):
            callee = local_callee(node)
            if callee in names:
                found.setdefault(callee, []).append(node)
        return found

    def _scope_of(self, node: ast.AST) -> ScopeNode:
        fn = self.ctx.enclosing_function(node)
        return fn if fn is not None else self.ctx.tree

    def definitions(self, node: ast.expr) -> list[ast.expr]:
        """Expressions `node` (a Name or `self.attr`) may hold; [] when unknown."""
        if isinstance(node, ast.Name):
            scope = self._scope_of(node)
            values = self._scope_bindings.get(id(scope), {}).get(node.id)
            if values:
                return values
            return self._scope_bindings[id(self.ctx.tree)].get(node.id, [])
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "self":
                return self._self_attributes.get(f"self.{node.attr}", [])
            scope = self._scope_of(node)
            key = f"{node.value.id}.{node.attr}"
            return self._scope_bindings.get(id(scope), {}).get(key, [])
        return []

    def unpackings(self, node: ast.Name) -> list[tuple[ast.expr, int, int]]:
        """Where `node`'s name is bound by tuple unpacking: (value, position, arity)."""
        scope = self._scope_of(node)
        found = self._unpacked_by_name.get((id(scope), node.id))
        if found:
            return found
        return self._unpacked_by_name.get((id(self.ctx.tree), node.id), [])

    def returns_of(self, call: ast.Call) -> list[ast.expr]:
        """What a call of a local function (`f(x)` or `self.f(x)`) may return."""
        func = call.func
        if isinstance(func, ast.Name) or (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id in ("self", "cls")
        ):
            return self._returns.get(identifier(func), [])
        return []

    def sources(self, expr: ast.expr, depth: int = 0) -> Iterator[ast.expr]:
        """`expr` and every expression it may derive from through names and local returns.

        Each expression is visited once (re-assignments like `x = f(x)` repeated many times
        stay linear), at most `_MAX_DEPTH` steps from `expr`."""
        seen: set[int] = set()
        stack: list[tuple[ast.expr, int]] = [(expr, depth)]
        while stack:
            current, level = stack.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            yield current
            if level >= _MAX_DEPTH:
                continue
            nexts: list[ast.expr] = []
            if isinstance(current, ast.Name | ast.Attribute):
                nexts = [v for v in self.definitions(current) if v is not current]
            elif isinstance(current, ast.Call):
                callee = current.func.id if isinstance(current.func, ast.Name) else None
                nexts = list(self._returns.get(callee or "", []))
            stack.extend((value, level + 1) for value in reversed(nexts))

    def constructed_as(self, expr: ast.expr) -> str | None:
        """Qualified name of the constructor/factory whose result `expr` holds, if resolvable.

        `crit = nn.CrossEntropyLoss(); crit(...)` -> 'torch.nn.CrossEntropyLoss'.
        """
        for source in self.sources(expr):
            if isinstance(source, ast.Call):
                qual = self.qualname_of(source)
                if qual is not None:
                    return qual
        return None

    def constructors(self, expr: ast.expr) -> Iterator[ast.Call]:
        """Calls whose result `expr` may hold, seen through `.to()/.eval()`-style chains."""
        for source in self.sources(expr):
            call = source
            while (
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Attribute)
                and call.func.attr in ("to", "cuda", "cpu", "eval", "train", "float", "half")
            ):
                call = call.func.value
            if isinstance(call, ast.Call):
                yield call

    def local_class(self, expr: ast.expr) -> ast.ClassDef | None:
        """The module's own class whose instance `expr` may hold (`model = Net()`)."""
        for call in self.constructors(expr):
            if isinstance(call.func, ast.Name) and call.func.id in self.classes:
                return self.classes[call.func.id]
        return None

    def derives_from(self, expr: ast.expr, predicate: Callable[[ast.AST], bool]) -> bool:
        """Whether any sub-expression of any source of `expr` satisfies `predicate`."""
        for source in self.sources(expr):
            for sub in walk_scope(source):
                if predicate(sub):
                    return True
                if (
                    sub is not source
                    and isinstance(sub, ast.Name | ast.Attribute)
                    and any(predicate(s) for s in self._shallow_sources(sub))
                ):
                    return True
        return False

    def _shallow_sources(self, expr: ast.expr) -> Iterator[ast.AST]:
        for value in self.definitions(expr):
            yield from walk_scope(value)

    # ---- grad mode ---------------------------------------------------------------------------

    def grad_disabled_at(self, node: ast.AST) -> bool:
        """Autograd off or possibly off at `node` (`analysis.gradmode`: the one answer)."""
        return grad_may_be_off(self.ctx, node)

    # ---- models and losses ------------------------------------------------------------------

    def is_module_value(self, expr: ast.expr) -> bool:
        """Whether `expr` may hold an `nn.Module` (by construction, or a name like `model`)."""
        if isinstance(expr, ast.Name) and expr.id in ("self", "cls"):
            return False
        for call in self.constructors(expr):
            if isinstance(call.func, ast.Name) and call.func.id in self.module_classes:
                return True
            qual = self.qualname_of(call) or ""
            last = qual.rsplit(".", 1)[-1]
            if qual.startswith("torch.nn.") and last[:1].isupper() and "Loss" not in last:
                return True
            if qual.startswith(MODEL_FACTORY_PREFIXES) or qual.endswith("from_pretrained"):
                return True
        if isinstance(expr, ast.Attribute) and not (
            isinstance(expr.value, ast.Name) and expr.value.id == "self"
        ):
            return False  # `solver.model()` is a method; only `self.model` is known by name
        name = identifier(expr)
        return bool(name) and self.ctx.qualname(expr) is None and bool(_MODEL_NAME.search(name))

    def is_model_call(self, call: ast.Call) -> bool:
        """`model(x)`, `self.net(x)`, `model.forward(x)`."""
        func = call.func
        if isinstance(func, ast.Attribute) and func.attr == "forward":
            return self.is_module_value(func.value)
        if isinstance(func, ast.Call):  # `Net()(x)`
            return self.is_module_value(func)
        if not isinstance(func, ast.Name | ast.Attribute):
            return False
        if self.ctx.qualname(func) is not None or self.is_loss_callee(func):
            return False
        return self.is_module_value(func)

    def loss_class(self, callee: ast.expr) -> str | None:
        """'CrossEntropyLoss' when `callee` holds a torch loss module, else None."""
        qual = self.constructed_as(callee) or ""
        last = qual.rsplit(".", 1)[-1]
        if qual.startswith("torch.nn.") and last.endswith("Loss"):
            return last
        return None

    def is_loss_callee(self, callee: ast.expr) -> bool:
        qual = self.ctx.qualname(callee) or ""
        if qual.startswith("torch.nn.functional."):
            name = qual.rsplit(".", 1)[-1]
            return name in LOSS_FUNCTIONS or name.endswith("_loss")
        if qual:
            return False
        return self.loss_class(callee) is not None or bool(_LOSS_NAME.search(identifier(callee)))

    # ---- graph attachment -------------------------------------------------------------------

    def graph_origin(self, expr: ast.expr) -> GraphOrigin | None:
        """'loss' or 'output' when `expr` may still hold an autograd graph, else None.

        A value is attached when it comes from a loss (a criterion, `F.*_loss`, a function
        named like a loss) or a model's output, through arithmetic, reductions and views; it
        is detached by `.item()`, `.detach()`, `float()`, comparisons and `argmax`, and
        anything computed under `no_grad`/`inference_mode`.
        """
        return self._origin(expr, set())

    def _origin(self, expr: ast.expr, active: set[int]) -> GraphOrigin | None:
        key = id(expr)
        if key in self._origin_memo:
            return self._origin_memo[key]
        if key in active or len(active) > _MAX_VISITS:
            return None
        active.add(key)
        result = self._origin_uncached(expr, active)
        active.discard(key)
        self._origin_memo[key] = result
        return result

    def _first_origin(self, exprs: Iterable[ast.expr], active: set[int]) -> GraphOrigin | None:
        found: GraphOrigin | None = None
        for expr in exprs:
            origin = self._origin(expr, active)
            if origin == "loss":
                return origin
            found = found or origin
        return found

    def _origin_uncached(self, expr: ast.expr, active: set[int]) -> GraphOrigin | None:
        if self.grad_disabled_at(expr):
            return None
        if isinstance(expr, ast.Name):
            return self._first_origin(self.definitions(expr), active)
        if isinstance(expr, ast.Attribute):
            if expr.attr in ("data", "grad", "shape", "dtype", "device", "requires_grad", "ndim"):
                return None
            return self._first_origin(self.definitions(expr), active)
        if isinstance(expr, ast.Call):
            return self._call_origin(expr, active)
        if isinstance(expr, ast.BinOp):
            return self._first_origin((expr.left, expr.right), active)
        if isinstance(expr, ast.UnaryOp):
            return self._origin(expr.operand, active)
        if isinstance(expr, ast.Subscript | ast.Starred):
            return self._origin(expr.value, active)
        if isinstance(expr, ast.IfExp):
            return self._first_origin((expr.body, expr.orelse), active)
        if isinstance(expr, ast.Tuple | ast.List):
            return self._first_origin(expr.elts, active)
        if isinstance(expr, ast.Dict):
            return self._first_origin(expr.values, active)
        return None

    def _call_origin(self, call: ast.Call, active: set[int]) -> GraphOrigin | None:
        func = call.func
        if isinstance(func, ast.Name) and func.id in DETACHING_BUILTINS:
            return None
        if isinstance(func, ast.Attribute) and func.attr in DETACHING_METHODS:
            return None
        if self.is_loss_callee(func):
            return "loss"
        if self.is_model_call(call):
            return "output"
        qual = self.qualname_of(call)
        if qual is not None:
            if qual.startswith("torch.") and qual.rsplit(".", 1)[-1] not in NON_GRAD_TORCH:
                return self._first_origin(call.args, active)
            return None
        if isinstance(func, ast.Name) and func.id in AGGREGATING_BUILTINS:
            return self._first_origin(call.args, active)
        returned = self.returns_of(call)
        if returned:
            return self._first_origin(returned, active)
        if isinstance(func, ast.Attribute):
            return self._origin(func.value, active)
        return None

    # ---- producers (what a value *is*, through shape-preserving steps) -------------------------

    def producers(self, expr: ast.expr, depth: int = 0) -> Iterator[ast.Call]:
        """The calls that produce `expr`, seen through names, local returns, views and casts.

        `p = F.softmax(z); q = p.view(-1, C)` -> the softmax call for `q`. A model call yields
        itself and, for a local class, the producers of what its `forward` returns. Each
        expression is visited once.
        """
        seen: set[int] = set()
        stack: list[tuple[ast.expr, int]] = [(expr, depth)]
        while stack:
            current, level = stack.pop()
            if id(current) in seen or level > _MAX_DEPTH:
                continue
            seen.add(id(current))
            if isinstance(current, ast.Call):
                yield current
            stack.extend((value, level + 1) for value in reversed(self._produced_from(current)))

    def _produced_from(self, expr: ast.expr) -> list[ast.expr]:
        """What `expr` passes through unchanged in meaning (see `producers`)."""
        if isinstance(expr, ast.Name | ast.Attribute):
            return [v for v in self.definitions(expr) if v is not expr]
        if isinstance(expr, ast.Subscript | ast.Starred):
            return [expr.value]
        if isinstance(expr, ast.IfExp):
            return [expr.body, expr.orelse]
        if isinstance(expr, ast.Call):
            func = expr.func
            if isinstance(func, ast.Attribute) and func.attr in PASSTHROUGH_METHODS:
                return [func.value]
            if self.qualname_of(expr) in PASSTHROUGH_FUNCTIONS and expr.args:
                return [expr.args[0]]
            return list(self.returns_of(expr)) or self._single_return(expr)
        return []

    def _single_return(self, call: ast.Call) -> list[ast.expr]:
        """What the one local function `call` runs returns (`self(x)` -> `forward`), when it
        has a single `return`: a forward that returns logits in training and probabilities
        otherwise says nothing certain about either."""
        if self.qualname_of(call) is not None:
            return []
        targets = self.ctx.calls.resolve(call)
        if len(targets) != 1:
            return []
        returns = [
            node.value
            for node in walk_scope(targets[0].body)
            if isinstance(node, ast.Return) and node.value is not None
        ]
        return returns if len(returns) == 1 else []

    def module_output_producers(self, module: ast.expr, depth: int = 0) -> Iterator[ast.Call]:
        """Calls that produce what calling `module` returns: the last layer of an
        `nn.Sequential`, or what a local class's `forward` returns."""
        if depth > 3:
            return
        for call in self.constructors(module):
            qual = self.qualname_of(call) or ""
            if qual.endswith("Sequential") and call.args:
                last = call.args[-1]
                if isinstance(last, ast.Call):
                    yield last
                    yield from self.module_output_producers(last, depth + 1)
            elif isinstance(call.func, ast.Name) and call.func.id in self.classes:
                yield from self.forward_producers(self.classes[call.func.id], depth)

    def forward_producers(self, cls: ast.ClassDef, depth: int) -> Iterator[ast.Call]:
        for stmt in cls.body:
            if isinstance(stmt, ast.FunctionDef) and stmt.name == "forward":
                for node in walk_scope(stmt.body):
                    if isinstance(node, ast.Return) and node.value is not None:
                        for producer in self.producers(node.value):
                            yield producer
                            if isinstance(producer.func, ast.Attribute | ast.Name):
                                callee = producer.func
                                if self.is_module_value(callee):
                                    yield from self.module_output_producers(callee, depth + 1)

    def value_producers(self, expr: ast.expr) -> Iterator[ast.Call]:
        """`producers`, plus the output layers of any model whose call produces `expr`."""
        for call in self.producers(expr):
            yield call
            func = call.func
            if self.is_model_call(call):
                forward = isinstance(func, ast.Attribute) and func.attr == "forward"
                target = func.value if forward and isinstance(func, ast.Attribute) else func
                yield from self.module_output_producers(target)

    # ---- held-out (test/validation) derivation --------------------------------------------------

    def is_split_call(self, call: ast.Call) -> bool:
        """`train_test_split`/`random_split` from sklearn or torch (also the old
        `sklearn.cross_validation` module), or an unresolved local of that name."""
        qual = self.qualname_of(call)
        if qual is not None:
            return qual in SPLIT_FUNCTIONS or (
                qual.startswith("sklearn.") and qual.endswith(".train_test_split")
            )
        return identifier(call.func) in _SPLIT_SIMPLE_NAMES

    def held_out_kind(
        self, expr: ast.expr, kinds: frozenset[str] = frozenset({"test", "val"})
    ) -> str | None:
        """'test' or 'val' when `expr` may derive from that held-out split, else None.

        Evidence: a name that says so (`X_test`, `val_loader`, `testset`), a dataset built with
        `train=False` or `split="test"`, the held-out half of `train_test_split`/`random_split`
        (kind 'split' for an unnamed `random_split` part), the tail `x[k:]` of a sequence whose
        head `x[:k]` is taken too, and anything computed from those (calls, loaders, loops).
        """
        seen: set[int] = set()
        stack: list[tuple[ast.expr, int]] = [(expr, 0)]
        while stack and len(seen) < _MAX_VISITS:
            node, depth = stack.pop()
            if id(node) in seen or depth > _MAX_DEPTH * 2:
                continue
            seen.add(id(node))
            kind = self._direct_held_out(node)
            if kind is not None and kind in kinds:
                return kind
            stack.extend((child, depth + 1) for child in self._held_out_children(node))
        return None

    def _direct_held_out(self, node: ast.expr) -> str | None:
        if isinstance(node, ast.Name | ast.Attribute):
            if isinstance(node, ast.Name) and node.id == "self":
                return None
            kind = held_out_name_kind(identifier(node))
            if kind is not None:
                return kind
            if isinstance(node, ast.Name):
                for value, index, _ in self.unpackings(node):
                    if isinstance(value, ast.Call) and self.is_split_call(value) and index > 0:
                        split = identifier(value.func)
                        if split == "train_test_split" and index % 2 == 1:
                            return "test"
                        if split == "random_split":
                            return "split"
            return None
        if isinstance(node, ast.Call):
            if _is_false(kwarg(node, "train")):
                return "test"
            for name in ("split", "subset", "mode"):
                option = kwarg(node, name)
                if (
                    isinstance(option, ast.Constant)
                    and isinstance(option.value, str)
                    and option.value.lower() in _HELD_OUT_SPLIT_VALUES
                ):
                    return held_out_name_kind(option.value) or "val"
            return None
        if isinstance(node, ast.Subscript) and self._is_tail_slice(node):
            return "split"
        return None

    def _held_out_children(self, node: ast.expr) -> Iterator[ast.expr]:
        if isinstance(node, ast.Name):
            # `train, val, test = load()` binds one part each of a mixed result: what `load`
            # returns as a whole says nothing about this part (split positions are read by
            # `_direct_held_out`).
            parts = {id(value) for value, _, _ in self.unpackings(node)}
            yield from (v for v in self.definitions(node) if id(v) not in parts)
        elif isinstance(node, ast.Attribute):
            yield from self.definitions(node)
            yield node.value
        elif isinstance(node, ast.Call):
            if not self.is_split_call(node):
                yield from node.args
                yield from (
                    k.value
                    for k in node.keywords
                    if k.arg is not None and k.arg not in _NON_DATA_KEYWORDS
                )
                # A returned tuple mixes splits (`return train, test`): its parts are not all
                # held out, and unpacking positions are not tracked through returns.
                yield from (r for r in self.returns_of(node) if not isinstance(r, ast.Tuple))
            if isinstance(node.func, ast.Attribute):
                yield node.func.value
        elif isinstance(node, ast.Subscript | ast.Starred):
            yield node.value
        elif isinstance(node, ast.BinOp):
            yield node.left
            yield node.right
        elif isinstance(node, ast.Tuple | ast.List | ast.Set):
            yield from node.elts
        elif isinstance(node, ast.IfExp):
            yield node.body
            yield node.orelse
        elif isinstance(node, ast.ListComp | ast.GeneratorExp | ast.SetComp):
            yield node.elt
            yield from (g.iter for g in node.generators)

    @cached_property
    def _head_slices(self) -> set[tuple[str, str]]:
        """(sequence text, bound text) of every `x[:k]` in the module."""
        found: set[tuple[str, str]] = set()
        for node in self.nodes(ast.Subscript):
            if isinstance(node.slice, ast.Slice):
                s = node.slice
                if s.lower is None and s.upper is not None and s.step is None:
                    found.add((ast.unparse(node.value), ast.unparse(s.upper)))
        return found

    def _is_tail_slice(self, node: ast.Subscript) -> bool:
        s = node.slice
        if not isinstance(s, ast.Slice) or s.lower is None or s.upper is not None:
            return False
        return (ast.unparse(node.value), ast.unparse(s.lower)) in self._head_slices

    @cached_property
    def _split_bases(self) -> set[str]:
        """Texts of the sequences split by head/tail slicing (`x` in `x[:k]`, `x[k:]`)."""
        return {
            ast.unparse(sub.value) for sub in self.nodes(ast.Subscript) if self._is_tail_slice(sub)
        }

    def is_split_part(self, node: ast.AST) -> bool:
        """A split call, or a head/tail slice of a sequence split by slicing."""
        if isinstance(node, ast.Call):
            return self.is_split_call(node)
        return (
            isinstance(node, ast.Subscript)
            and isinstance(node.slice, ast.Slice)
            and ":]" in self.ctx.source
            and ast.unparse(node.value) in self._split_bases
        )

    @cached_property
    def split_inputs(self) -> list[tuple[ast.expr, list[ast.expr]]]:
        """Every split with the data it divides: split calls (their positional arguments)
        and `x[k:]` tails whose head `x[:k]` is taken too (the sequence `x`)."""
        found: list[tuple[ast.expr, list[ast.expr]]] = []
        text = self.ctx.source
        if "split" in text:
            for call in self.nodes(ast.Call):
                if self.is_split_call(call):
                    found.append((call, [a for a in call.args if not isinstance(a, ast.Starred)]))
        if ":]" in text:
            for sub in self.nodes(ast.Subscript):
                if self._is_tail_slice(sub):
                    found.append((sub, [sub.value]))
        return found

    def root_names(self, expr: ast.expr) -> set[str]:
        """Every plain name `expr` is computed from, through definitions (also of `self.x`
        attributes: a split inside a class method) and local returns (transitively, bounded)."""
        names: set[str] = set()
        seen: set[int] = set()
        frontier: list[ast.expr] = [expr]
        while frontier and len(seen) < _MAX_VISITS:
            current = frontier.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            for sub in walk_scope(current):
                if isinstance(sub, ast.Name) and sub.id not in names:
                    names.add(sub.id)
                    frontier.extend(self.definitions(sub))
                elif isinstance(sub, ast.Attribute) and identifier(sub.value) == "self":
                    frontier.extend(self.definitions(sub))  # `self.X` set in `__init__`
                elif isinstance(sub, ast.Call):
                    frontier.extend(self.returns_of(sub))
        return names

    def sources_include(
        self, expr: ast.expr, predicate: Callable[[ast.AST], bool]
    ) -> ast.AST | None:
        """The first node among `expr`'s sources (and their parts) matching `predicate`."""
        for source in self.sources(expr):
            for sub in walk_scope(source):
                if predicate(sub):
                    return sub
                if sub is not source and isinstance(sub, ast.Name):
                    for value in self.definitions(sub):
                        for inner in walk_scope(value):
                            if predicate(inner):
                                return inner
        return None

    # ---- saved-artifact provenance ---------------------------------------------------------------

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
            if qual.startswith("torch.") and qual.rsplit(".", 1)[-1] in NON_GRAD_TORCH:
                return "weights"
            if self.is_module_value(func) or (
                isinstance(func, ast.Name) and func.id in self.module_classes
            ):
                return "module"
            return "unknown"
        if isinstance(obj, ast.Name | ast.Attribute):
            if self.is_module_value(obj):
                return "module"
            values = self.definitions(obj)
            if not values:
                return "unknown"
            kinds = [self._object_kind(v, depth + 1) for v in values]
            if "module" in kinds:
                return "module"
            return "weights" if all(k == "weights" for k in kinds) else "unknown"
        return "unknown"

    # ---- method reachability -------------------------------------------------------------------

    @cached_property
    def _call_graph(self) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
        """(function name -> mode methods its body calls, function name -> local callees)."""
        methods: dict[str, set[str]] = {}
        callees: dict[str, set[str]] = {}
        names = set(self.functions)
        for call in self.nodes(ast.Call):
            scope = self._scope_key(call)
            if not isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            mode = _mode_method(call)
            if mode is not None:
                methods.setdefault(scope.name, set()).add(mode)
            callee = local_callee(call)
            if callee in names:
                callees.setdefault(scope.name, set()).add(callee)
        return methods, callees

    def functions_reaching(self, method: str) -> frozenset[str]:
        """Local functions that call `.method()` ('eval' or 'train') directly or transitively."""
        if method in self._reaching:
            return self._reaching[method]
        methods, callees = self._call_graph
        reaching = {name for name, called in methods.items() if method in called}
        changed = True
        while changed:
            changed = False
            for name, called in callees.items():
                if name not in reaching and called & reaching:
                    reaching.add(name)
                    changed = True
        self._reaching[method] = frozenset(reaching)
        return self._reaching[method]

    @staticmethod
    def methods_called(body: list[ast.stmt] | ast.AST) -> set[str]:
        """Mode methods a body calls directly: 'eval', 'train' (`train(False)` counts as eval)."""
        found: set[str] = set()
        for node in walk_scope(body):
            if isinstance(node, ast.Call):
                mode = _mode_method(node)
                if mode is not None:
                    found.add(mode)
        return found

    def reaches_method(self, body: list[ast.stmt] | ast.AST, method: str) -> bool:
        """Whether `body` calls `.method()` directly or through local functions it calls."""
        reaching = self.functions_reaching(method)
        for node in walk_scope(body):
            if isinstance(node, ast.Call) and (
                _mode_method(node) == method or local_callee(node) in reaching
            ):
                return True
        return False

    # ---- accumulation across iterations (graph retention) ----------------------------------------

    @cached_property
    def accumulations(self) -> list[Accumulation]:
        """`acc += v`, `acc = acc + v`, `acc.append(v)` inside a loop. Whether `acc` really
        carries values across iterations is `carried_across_iterations` (asked only for the
        sites a rule cares about, since it is the costly part)."""
        found: list[Accumulation] = []
        candidates: list[ast.AST] = [*self.nodes(ast.AugAssign), *self.nodes(ast.Assign)]
        candidates += self.calls_named(("append", "extend"))
        for node in candidates:
            pair = _accumulation_pair(node)
            if pair is None:
                continue
            loop = self._innermost_loop(node)
            while loop is not None and _iterates_keys_of(loop, pair[0]):
                loop = self._innermost_loop(loop)  # `for k, v in losses.items(): total[k] += v`
            if loop is not None:
                found.append(Accumulation(node, pair[0], pair[1], loop))
        return found

    def carried_across_iterations(self, acc: Accumulation) -> bool:
        """The accumulator outlives the iteration (no plain re-assignment in the loop body)
        and is never back-propagated itself (summing micro-batch losses is intended)."""
        if self._assigned_in(acc.target, acc.loop, acc.node):
            return False
        return not self.is_backpropagated(acc.target)

    def _innermost_loop(self, node: ast.AST) -> ast.For | ast.While | ast.AsyncFor | None:
        for anc in self.ctx.ancestors(node):
            if isinstance(anc, ast.For | ast.While | ast.AsyncFor):
                return anc
            if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
                return None
        return None

    def _assigned_in(
        self, target: ast.expr, loop: ast.For | ast.While | ast.AsyncFor, skip: ast.AST
    ) -> bool:
        """Whether the loop body re-binds `target` (or the dict it indexes) every iteration: a
        reset. One under a periodic guard (`if step % 100 == 0: total = 0`) still lets up to
        that many iterations' graphs pile up, so it is no reset."""
        texts = {ast.unparse(target)}
        if isinstance(target, ast.Subscript):
            texts.add(ast.unparse(target.value))
        for node in walk_scope(loop.body):
            if node is skip or not isinstance(node, ast.Assign | ast.AnnAssign):
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if node.value is not None and _accumulation_pair(node) is not None:
                continue
            if any(ast.unparse(t) in texts for t in targets) and not self._periodic(node, loop):
                return True
        return False

    def _periodic(self, node: ast.AST, loop: ast.AST) -> bool:
        child = node
        for anc in self.ctx.ancestors(node):
            if anc is loop:
                return False
            if isinstance(anc, ast.If) and child is not anc.test and is_periodic_guard(anc.test):
                return True
            child = anc
        return False

    def is_backpropagated(self, target: ast.expr) -> bool:
        """Whether some `.backward()`/`autograd.grad` in the module runs on a value derived from
        `target` (summing micro-batch losses before one backward is intended)."""
        text = ast.unparse(target)
        for call in self._backward_calls:
            receivers: list[ast.expr] = list(call.args)
            if isinstance(call.func, ast.Attribute):
                receivers.append(call.func.value)
            for receiver in receivers:
                if self.derives_from(receiver, lambda n: _same_text(n, text)):
                    return True
        return False

    @cached_property
    def _backward_calls(self) -> list[ast.Call]:
        calls: list[ast.Call] = []
        for node in self.nodes(ast.Call):
            qual = self.qualname_of(node) or ""
            if identifier(node.func) in ("backward", "manual_backward") or qual in (
                "torch.autograd.backward",
                "torch.autograd.grad",
            ):
                calls.append(node)
        return calls


class Accumulation:
    """One accumulation site: `node` adds `value` into `target` inside `loop`."""

    __slots__ = ("loop", "node", "target", "value")

    def __init__(
        self,
        node: ast.AST,
        target: ast.expr,
        value: ast.expr,
        loop: ast.For | ast.While | ast.AsyncFor,
    ) -> None:
        self.node = node
        self.target = target
        self.value = value
        self.loop = loop


def _same_text(node: ast.AST, text: str) -> bool:
    return _is_accumulator(node) and ast.unparse(node) == text


def _is_accumulator(node: ast.AST) -> bool:
    """`total`, `self.total`, `history["loss"]`, `totals[key]` (a constant or a plain name as
    the key), not `x[i + 1]`."""
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant | ast.Name) and _is_accumulator(node.value)
    return isinstance(node, ast.Name | ast.Attribute)


def _iterates_keys_of(loop: ast.AST, target: ast.expr) -> bool:
    """`for k, v in d.items()` / `for k in d` whose key indexes the accumulator `target`."""
    if not isinstance(target, ast.Subscript) or not isinstance(target.slice, ast.Name):
        return False
    if not isinstance(loop, ast.For | ast.AsyncFor):
        return False
    key = target.slice.id
    return any(isinstance(n, ast.Name) and n.id == key for n in ast.walk(loop.target))


def _accumulation_pair(node: ast.AST) -> tuple[ast.expr, ast.expr] | None:
    """(accumulator, added value) for `a += v`, `a = a + v`, `a.append(v)`; else None."""
    if isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Add):
        if _is_accumulator(node.target):
            return node.target, node.value
    elif isinstance(node, ast.Assign) and len(node.targets) == 1:
        target, value = node.targets[0], node.value
        if (
            _is_accumulator(target)
            and isinstance(value, ast.BinOp)
            and isinstance(value.op, ast.Add)
        ):
            text = ast.unparse(target)
            if ast.unparse(value.left) == text:
                return target, value.right
            if ast.unparse(value.right) == text:
                return target, value.left
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        receiver = node.func.value
        appends = node.func.attr in ("append", "extend") and len(node.args) == 1
        if appends and _is_accumulator(receiver):
            return receiver, node.args[0]
    return None
