"""Def-use over one module: which expressions a name, `self.x` or a local call may hold.

Scopes are functions (and the module); a name resolves to the assignments in its function,
then to the module's; `self.x` to every `self.x = ...` of the class; a local call to what
the function returns. Flow-insensitive by design: rules ask "may this value come from X?".
Every other analysis of the data-flow model builds on `DefUse`.
"""

from __future__ import annotations

import ast
import builtins
import re
import sys
from collections.abc import Callable, Collection, Iterable, Iterator
from functools import cached_property
from typing import TYPE_CHECKING, Literal, TypeVar, cast

from torchdoctor.agent.checks.analysis.vocabulary import (
    ARRAY_LIBRARIES,
    DATA_TRANSFORM_PREFIXES,
    DISPLAY_LIBRARIES,
    NN_MODULE_BASES,
)
from torchdoctor.agent.checks.loops import local_callee, walk_scope, walk_tree

_BUILTINS = frozenset(dir(builtins))

if TYPE_CHECKING:
    from torchdoctor.agent.checks.base import ModuleContext


ScopeNode = ast.Module | ast.FunctionDef | ast.AsyncFunctionDef
FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef
GraphOrigin = Literal["loss", "output"]
_N = TypeVar("_N", bound=ast.AST)
MAX_DEPTH = 8
MAX_VISITS = 400
_UNKNOWN = object()


def _binds_on_every_branch(branch: ast.If, name: str) -> bool:
    """Both arms of the `if` (an `elif` chain ending in `else`) assign `name` at their top."""

    def binds(stmt: ast.stmt) -> bool:
        if isinstance(stmt, ast.Assign):
            return any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets)
        return isinstance(stmt, ast.If) and _binds_on_every_branch(stmt, name)

    return bool(branch.orelse) and any(map(binds, branch.body)) and any(map(binds, branch.orelse))


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


def _copies_locals_to_self(call: ast.Call) -> bool:
    """`self.__dict__.update(locals())`."""
    func = call.func
    return (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Attribute)
        and func.value.attr == "__dict__"
        and isinstance(func.value.value, ast.Name)
        and func.value.value.id == "self"
        and len(call.args) == 1
        and isinstance(call.args[0], ast.Call)
        and isinstance(call.args[0].func, ast.Name)
        and call.args[0].func.id == "locals"
    )


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


def is_false(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


_RETURNS_ITSELF = frozenset(
    {"to", "cuda", "cpu", "eval", "train", "float", "half", "double", "bfloat16"}
)
"""`nn.Module` methods that return the module they are called on."""


class DefUse:
    """The def-use tables of one module, built lazily from the engine's node index."""

    def __init__(self, ctx: ModuleContext) -> None:
        self.ctx = ctx
        self._origin_memo: dict[int, GraphOrigin | None] = {}
        self._reaching: dict[str, frozenset[str]] = {}
        self._qualnames: dict[int, str | None] = {}
        self._constructed: dict[int, str | None] = {}
        self._scope_keys: dict[int, object] = {}

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

    @cached_property
    def makes_no_tensors(self) -> bool:
        """The module imports only the standard library and array or plotting libraries (no
        project module, no relative or star import): its own functions compute no tensors (a
        numpy lecture's `def loss(x, y)`; values may still arrive through parameters)."""
        if self.ctx.imports.star_imported:
            return False
        if re.search(r"^\s*from\s+\.", self.ctx.source, re.MULTILINE):
            return False
        tensor_free = sys.stdlib_module_names | ARRAY_LIBRARIES | DISPLAY_LIBRARIES
        return all(
            target.split(".", 1)[0] in tensor_free for target in self.ctx.imports.aliases.values()
        )

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
        or a lambda, whose names rules do not track. Every node passed on the way up
        remembers the answer (bindings and returns share their ancestors)."""
        memo = self._scope_keys
        parents = self.ctx.parents
        passed: list[int] = []
        found: ScopeNode | None = self.ctx.tree
        current = parents.get(node)
        while current is not None:
            if isinstance(current, ast.FunctionDef | ast.AsyncFunctionDef):
                found = current
                break
            if isinstance(current, ast.ClassDef | ast.Lambda):
                found = None
                break
            known = memo.get(id(current), _UNKNOWN)
            if known is not _UNKNOWN:
                found = cast(ScopeNode | None, known)
                break
            passed.append(id(current))
            current = parents.get(current)
        for key in passed:
            memo[key] = found
        return found

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
    def _unpacked_names(self) -> frozenset[str]:
        """Every name some tuple unpacking binds (most names never are)."""
        return frozenset(name for _, name in self._unpacked_by_name)

    @cached_property
    def _bound_keys(self) -> frozenset[str]:
        """Every name and `obj.attr` bound somewhere: most lookups (`x.view`, `F.relu`, a
        parameter) are of keys bound nowhere, answered without finding their scope."""
        return frozenset(key for table in self._scope_bindings.values() for key in table)

    @cached_property
    def _self_attributes(self) -> dict[str, list[ast.expr]]:
        """`self.x` -> values assigned anywhere in the module's methods, including the locals
        a method copies onto the instance with `self.__dict__.update(locals())` (YOLOv5's
        multi-backend loader binds every backend's session that way)."""
        merged: dict[str, list[ast.expr]] = {}
        for table in self._scope_bindings.values():
            for name, values in table.items():
                if name.startswith("self."):
                    merged.setdefault(name, []).extend(values)
        for call in self.calls_named(("update",)):
            scope = self._scope_key(call)
            if scope is None or scope is self.ctx.tree or not _copies_locals_to_self(call):
                continue
            for name, values in self._scope_bindings.get(id(scope), {}).items():
                if "." not in name and name != "self":
                    merged.setdefault(f"self.{name}", []).extend(values)
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
                else:
                    if self._forward_over_imported_bases(cls):
                        found.add(cls.name)
                        changed = True
        return found

    def _forward_over_imported_bases(self, cls: ast.ClassDef) -> bool:
        """A class with a `forward` method whose bases all come from elsewhere (`class
        LVAE(BaseVAE)`, the base defined in the package's `base.py`): a module, its base read
        in another file. A local base that is no module, `object`, a torch class that is no
        module (`autograd.Function`) or a data transform (torchvision's `RandomCrop`, a module
        that runs in the loader) says otherwise."""
        if not cls.bases or not (
            any(isinstance(stmt, ast.FunctionDef) and stmt.name == "forward" for stmt in cls.body)
            or self._class_runs_own_layers(cls)
        ):
            return False
        library_bases = 0
        for base in cls.bases:
            simple = identifier(base)
            qual = self.ctx.qualname(base) or ""
            if not simple or simple in self.classes or simple == "object":
                return False
            if qual.startswith(("torch.", *DATA_TRANSFORM_PREFIXES)) or simple in _BUILTINS:
                return False
            package = qual.partition(".")[0] if "." in qual else ""
            library_bases += package in ARRAY_LIBRARIES or package in sys.stdlib_module_names
        # every base from an array library or the standard library (skorch's
        # `NeuralNet(BaseEstimator)`, whose `forward` runs the module it wraps): no module
        return library_bases < len(cls.bases)

    def _class_runs_own_layers(self, cls: ast.ClassDef) -> bool:
        """A method of the class runs two or more `torch.nn` layers its `__init__` builds
        (ImageCaptioning's `FCModel._forward`: `self.embed(it)`, `self.core(xt, state)`,
        `self.logit(output)`, its `forward` inherited from a base of another file)."""
        init = next(
            (s for s in cls.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"), None
        )
        if init is None:
            return False
        layers = {
            target.attr
            for node in walk_scope(init.body)
            if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call)
            and (self.ctx.qualname(node.value.func) or "").startswith("torch.nn.")
            for target in node.targets
            if isinstance(target, ast.Attribute) and identifier(target.value) == "self"
        }
        if len(layers) < 2:
            return False
        for method in cls.body:
            if isinstance(method, ast.FunctionDef) and method.name != "__init__":
                used = {
                    node.func.attr
                    for node in walk_scope(method.body)
                    if isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and identifier(node.func.value) == "self"
                    and node.func.attr in layers
                }
                if len(used) >= 2:
                    return True
        return False

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

    @cached_property
    def _call_defaults(self) -> dict[int, dict[str, ast.Call]]:
        """function id -> parameter -> its default, when that default builds an object
        (`def __init__(self, loss=nn.CrossEntropyLoss())`): what the parameter holds unless
        a caller passes another, and the only value the module shows for it."""
        found: dict[int, dict[str, ast.Call]] = {}
        defs: list[FunctionNode] = [*self.nodes(ast.FunctionDef), *self.nodes(ast.AsyncFunctionDef)]
        for fn in defs:
            args = fn.args
            positional = [*args.posonlyargs, *args.args]
            defaulted = positional[len(positional) - len(args.defaults) :]
            pairs = [
                *zip(defaulted, args.defaults, strict=True),
                *zip(args.kwonlyargs, args.kw_defaults, strict=True),
            ]
            for param, default in pairs:
                if isinstance(default, ast.Call):
                    found.setdefault(id(fn), {})[param.arg] = default
        return found

    @cached_property
    def _defaulted_names(self) -> frozenset[str]:
        return frozenset(name for table in self._call_defaults.values() for name in table)

    def _scope_of(self, node: ast.AST) -> ScopeNode:
        fn = self.ctx.enclosing_function(node)
        return fn if fn is not None else self.ctx.tree

    def definitions(self, node: ast.expr) -> list[ast.expr]:
        """Expressions `node` (a Name or `self.attr`) may hold; [] when unknown."""
        if isinstance(node, ast.Name):
            defaulted = node.id in self._defaulted_names
            if node.id not in self._bound_keys and not defaulted:
                return []
            scope = self._scope_of(node)
            values = self._scope_bindings.get(id(scope), {}).get(node.id)
            if values and node.id in self._comprehension_names:
                values = [v for v in values if self._binding_visible(v, node)]
            if values:
                return values
            default = self._call_defaults.get(id(scope), {}).get(node.id) if defaulted else None
            if default is not None:
                return [default]
            return self._closure_bindings(scope, node.id)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "self":
                return self._self_attributes.get(f"self.{node.attr}", [])
            key = f"{node.value.id}.{node.attr}"
            if key not in self._bound_keys:
                return []
            scope = self._scope_of(node)
            return self._scope_bindings.get(id(scope), {}).get(key, [])
        return []

    def _closure_bindings(self, scope: ScopeNode, name: str) -> list[ast.expr]:
        """A name a nested function reads but does not bind: the nearest enclosing function
        that binds it (`def update(): pi_optimizer.step()` inside the `def vpg(...)` that
        builds `pi_optimizer`), else the module's."""
        bindings = self._scope_bindings
        outer = self.ctx.enclosing_function(scope) if scope is not self.ctx.tree else None
        while outer is not None:
            values = bindings.get(id(outer), {}).get(name)
            if values:
                return values
            outer = self.ctx.enclosing_function(outer)
        return bindings[id(self.ctx.tree)].get(name, [])

    @cached_property
    def _comprehension_names(self) -> frozenset[str]:
        """Names some comprehension binds (`for x in xs` inside `[...]`): few modules have any."""
        return frozenset(
            name for node in self.nodes(ast.comprehension) for name, _ in _target_names(node.target)
        )

    def _binding_visible(self, value: ast.expr, read: ast.expr) -> bool:
        """A comprehension's variable exists only inside it (Python 3): the iterable it is
        bound from is no definition of a same-named variable read outside (`losses` of
        `[l[j] for losses in losses_list]` is not the loop's `losses`)."""
        binder = self.ctx.parents.get(value)
        if not (isinstance(binder, ast.comprehension) and binder.iter is value):
            return True
        expr = self.ctx.parents.get(binder)
        if not isinstance(expr, ast.expr):
            return True
        start = (expr.lineno, expr.col_offset)
        end = (expr.end_lineno or expr.lineno, expr.end_col_offset or 0)
        return start <= (read.lineno, read.col_offset) <= end

    def live_definitions(self, name: ast.Name) -> list[ast.expr]:
        """`definitions(name)` less the bindings a later plain assignment in the same block
        always overwrites before this read: `d = a + b; d = d.item()`, read after that block,
        holds only the float. A read between the two, a jump out between them, or an
        augmented assignment (`d += x` keeps what `d` held) keeps the earlier binding."""
        values = self.definitions(name)
        if len(values) < 2:
            return values
        statements = [self._statement_of(v) for v in values]
        killers = [
            killer
            for s in statements
            if isinstance(s, ast.Assign)
            for killer in self._binding_statements(s, name.id)
        ]
        return [
            value
            for value, stmt in zip(values, statements, strict=True)
            if stmt is None or not any(self._overwrites(k, stmt, name) for k in killers)
        ]

    def reaching_or_all(self, name: ast.Name) -> list[ast.expr]:
        """The binding that reaches this read when one does on every path (`reaching`), else
        every binding of the name: a name rebound later says nothing of what was read here."""
        reached = self.reaching(name)
        return [reached] if reached is not None else self.definitions(name)

    def module_method(self, fn: ast.AST | None) -> bool:
        """`fn` is a method of a local `nn.Module` class (`forward`, `encode`, `generate`): part
        of the model's computation, run in whatever mode the model is in."""
        owner = self.ctx.parents.get(fn) if fn is not None else None
        return isinstance(owner, ast.ClassDef) and owner.name in self.module_classes

    def _binding_statements(self, assign: ast.Assign, name: str) -> Iterator[ast.stmt]:
        """The assignment, and each `if` around it whose every branch binds `name`
        (`if isinstance(s, list): s = [...] else: s = s.detach()`): such an `if` overwrites the
        name as surely as one assignment in its block."""
        yield assign
        parent = self.ctx.parents.get(assign)
        while isinstance(parent, ast.If) and _binds_on_every_branch(parent, name):
            yield parent
            parent = self.ctx.parents.get(parent)

    def _overwrites(self, later: ast.stmt, earlier: ast.stmt, read: ast.AST) -> bool:
        if later is earlier:
            return False
        block = self._block_of(earlier)
        if block is None:
            return False
        first = next(i for i, s in enumerate(block) if s is earlier)
        last = next((i for i, s in enumerate(block) if s is later), None)
        if last is None or last <= first:
            return False
        jumps = (ast.Break, ast.Continue, ast.Return, ast.Raise)
        if any(isinstance(n, jumps) for s in block[first + 1 : last] for n in walk_tree(s)):
            return False
        for anc in self.ctx.ancestors(read):
            if isinstance(anc, ast.stmt) and any(anc is s for s in block):
                position = next(i for i, s in enumerate(block) if s is anc)
                return not first < position <= last
        return True

    def reaching(self, name: ast.Name) -> ast.expr | None:
        """The one binding of `name` that reaches this read: the latest earlier binding in its
        function, when its statement precedes the read's in one block (it runs first on every
        path) and no later binding can come back to the read around a loop; None otherwise.
        The flow-sensitive answer for `out, _ = rnn(x); out = out[:, -1]`."""
        read = (name.lineno, name.col_offset)
        earlier: list[tuple[tuple[int, int], ast.stmt, ast.expr]] = []
        later: list[ast.stmt] = []
        for value in self.definitions(name):
            stmt = self._statement_of(value)
            if stmt is None:
                return None
            if (stmt.end_lineno or stmt.lineno, stmt.end_col_offset or 0) <= read:
                earlier.append(((stmt.lineno, stmt.col_offset), stmt, value))
            else:
                later.append(stmt)
        if not earlier:
            return None
        earlier.sort(key=lambda item: item[0])
        _, stmt, value = earlier[-1]
        block = self._block_of(stmt)
        if block is None:
            return None
        for anc in self.ctx.ancestors(name):
            if isinstance(anc, ast.For | ast.AsyncFor | ast.While) and any(
                anc is rebound or any(a is anc for a in self.ctx.ancestors(rebound))
                for rebound in later
            ):
                return None  # rebound in this loop (its target too): a next iteration reads that
            if isinstance(anc, ast.stmt) and any(anc is s for s in block):
                return value if block.index(anc) > block.index(stmt) else None
        return None

    def _statement_of(self, node: ast.AST) -> ast.stmt | None:
        current: ast.AST | None = node
        while current is not None and not isinstance(current, ast.stmt):
            current = self.ctx.parents.get(current)
        return current

    def _block_of(self, stmt: ast.stmt) -> list[ast.stmt] | None:
        """The statement list that holds `stmt` (a body, an else, a finally)."""
        parent = self.ctx.parents.get(stmt)
        for field in ("body", "orelse", "finalbody"):
            block = getattr(parent, field, None)
            if isinstance(block, list) and any(stmt is s for s in block):
                return block
        return None

    def unpackings(self, node: ast.Name) -> list[tuple[ast.expr, int, int]]:
        """Where `node`'s name is bound by tuple unpacking: (value, position, arity)."""
        if node.id not in self._unpacked_names:
            return []
        scope = self._scope_of(node)
        found = self._unpacked_by_name.get((id(scope), node.id))
        if found:
            return found
        return self._unpacked_by_name.get((id(self.ctx.tree), node.id), [])

    def bound_values(self) -> Iterator[tuple[str, list[ast.expr]]]:
        """Every key (a name, `obj.attr`) with values the module binds to it, in any scope,
        `self.x`'s merged ones and parameters' defaults included: all `definitions` answers
        from (and more: scopes are not told apart)."""
        for table in self._scope_bindings.values():
            yield from table.items()
        yield from self._self_attributes.items()
        for defaults in self._call_defaults.values():
            for name, default in defaults.items():
                yield name, [default]

    def local_returns(self) -> dict[str, list[ast.expr]]:
        """Local function name -> what its `return`s give (`returns_of`, `sources`)."""
        return self._returns

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
        """`expr` and every expression it may derive from through names, local returns and
        either branch of a conditional expression.

        Each expression is visited once (re-assignments like `x = f(x)` repeated many times
        stay linear), at most `MAX_DEPTH` steps from `expr`."""
        seen: set[int] = set()
        stack: list[tuple[ast.expr, int]] = [(expr, depth)]
        while stack:
            current, level = stack.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            yield current
            if level >= MAX_DEPTH:
                continue
            nexts: list[ast.expr] = []
            if isinstance(current, ast.Name | ast.Attribute):
                nexts = [v for v in self.definitions(current) if v is not current]
            elif isinstance(current, ast.Call):
                callee = current.func.id if isinstance(current.func, ast.Name) else None
                nexts = list(self._returns.get(callee or "", []))
            elif isinstance(current, ast.IfExp):  # `CE() if n_classes > 1 else BCE()`: either
                nexts = [current.body, current.orelse]
            stack.extend((value, level + 1) for value in reversed(nexts))

    def constructed_as(self, expr: ast.expr) -> str | None:
        """Qualified name of the constructor/factory whose result `expr` holds, if resolvable.

        `crit = nn.CrossEntropyLoss(); crit(...)` -> 'torch.nn.CrossEntropyLoss'. Memoised
        per expression: model and loss questions ask it of the same callees again and again.
        """
        key = id(expr)
        if key in self._constructed:
            return self._constructed[key]
        found = None
        for source in self.sources(expr):
            if isinstance(source, ast.Call):
                found = self.qualname_of(source)
                if found is not None:
                    break
        self._constructed[key] = found
        return found

    def constructors(self, expr: ast.expr) -> Iterator[ast.Call]:
        """Calls whose result `expr` may hold, seen through `.to()/.eval()`-style chains and
        the names they are called on (`m = model.to(device)`: `m` holds what `model` does)."""
        yield from self._constructors(expr, set())

    def _constructors(self, expr: ast.expr, seen: set[int]) -> Iterator[ast.Call]:
        for source in self.sources(expr):
            if id(source) in seen:
                continue  # `model = model.to(device)` reaches itself
            seen.add(id(source))
            call = source
            while (
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Attribute)
                and call.func.attr in _RETURNS_ITSELF
            ):
                call = call.func.value
            if isinstance(call, ast.Call):
                yield call
            elif call is not source and isinstance(call, ast.Name | ast.Attribute):
                yield from self._constructors(call, seen)

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
