"""Which local functions and methods reach a method (`optimizer.step()` in a callee)."""

from __future__ import annotations

import ast
from functools import cached_property

from torchdoctor.agent.checks.analysis.defuse import is_false
from torchdoctor.agent.checks.analysis.model_facts import ModelFacts
from torchdoctor.agent.checks.loops import local_callee, walk_scope
from torchdoctor.agent.checks.module_text import may_name

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)
"""Nodes `walk_scope` does not descend into."""


# Methods of model wrappers that set the mode their flag names: Stable-Baselines3's
# `policy.set_training_mode(False)` (it calls `self.train(mode)`).
MODE_SETTERS = ("set_training_mode", "set_train_mode", "train_mode")


def mode_flag(call: ast.Call) -> ast.expr | None:
    """The flag of a `x.train(...)` call, given by position or as `mode=` (`train(False)` and
    `train(mode=False)` both switch to eval mode); None when it is left to its default."""
    if call.args:
        return call.args[0]
    return next((k.value for k in call.keywords if k.arg == "mode"), None)


def mode_switch(call: ast.Call) -> str | None:
    """The one reading of a mode call: 'eval' for `.eval()`, `.train(False)` (or
    `mode=False`) and `.set_training_mode(False)`; 'train' for `.train()`, `.train(True)`, a
    `.train(flag)` and `.set_training_mode(True)`; else None."""
    func = call.func
    if not isinstance(func, ast.Attribute):
        return None
    if func.attr in MODE_SETTERS:
        flag = call.args[0] if len(call.args) == 1 and not call.keywords else None
        if isinstance(flag, ast.Constant) and isinstance(flag.value, bool):
            return "train" if flag.value else "eval"
        return None
    if func.attr == "train":
        return "eval" if is_false(mode_flag(call)) else "train"
    if func.attr == "eval" and not call.args:
        return "eval"
    return None


def mode_text(source: str, method: str) -> bool:
    """Whether a module's text can hold a call that sets the `method` mode: `.eval()` and
    `.train(False)` set 'eval', `.train()` sets 'train'. Without these identifiers no call
    does, so nothing reaches the mode: a text check that spares the call graph (in 17 of
    18 of torch's sources; `evaluate`, `training` and `constraint` do not count)."""
    if any(may_name(source, setter) for setter in MODE_SETTERS):
        return method in ("eval", "train")
    if method == "eval":
        return may_name(source, "eval") or may_name(source, "train")
    return method == "train" and may_name(source, "train")


_NO_DEFAULT = object()


def _constant_default(fn: ast.FunctionDef | ast.AsyncFunctionDef, parameter: str) -> object:
    """The constant a parameter defaults to (`mode=True`: True), else `_NO_DEFAULT`."""
    args = fn.args
    positional = [*args.posonlyargs, *args.args]
    first = len(positional) - len(args.defaults)
    pairs = [
        *zip(positional[first:], args.defaults, strict=True),
        *((a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None),
    ]
    for arg, default in pairs:
        if arg.arg == parameter and isinstance(default, ast.Constant):
            return default.value
    return _NO_DEFAULT


class MethodReach(ModelFacts):
    """Which functions reach a mode method (`eval`/`train`) through local calls."""

    def mode_method(self, call: ast.Call) -> str | None:
        """The mode `call` sets ('eval' or 'train'), or None; a loss module's own
        `criterion.eval()` (DETR evaluates with `model.eval(); criterion.eval()`) puts no
        model in either mode, so it does not count as the model's."""
        mode = mode_switch(call)
        if mode is None or not isinstance(call.func, ast.Attribute):
            return mode
        return None if self.is_loss_callee(call.func.value) else mode

    @cached_property
    def _call_graph(self) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
        """(function name -> mode methods its body calls, function name -> local callees)."""
        methods: dict[str, set[str]] = {}
        callees: dict[str, set[str]] = {}
        names = set(self.functions)
        for call in self.nodes(ast.Call):
            mode = self.mode_method(call)
            callee = local_callee(call)
            if mode is None and callee not in names:
                continue  # most calls: their function need not be found
            scope = self._scope_key(call)
            if not isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            dispatched = self.dispatched_mode(call)
            if dispatched is not None:  # `set_mode('eval', models)`: that mode, no callee
                methods.setdefault(scope.name, set()).add(dispatched)
                continue
            if mode is not None:
                methods.setdefault(scope.name, set()).add(mode)
            if callee in names:
                callees.setdefault(scope.name, set()).add(callee)
        for name, (_, _, modes, _) in self._mode_dispatchers.items():
            methods.setdefault(name, set()).update(modes.values())  # either, given a variable
        return methods, callees

    @cached_property
    def _mode_dispatchers(self) -> dict[str, tuple[str, int, dict[object, str], object]]:
        """Local functions that set the mode their argument names: every `.train()`/`.eval()`
        they call sits under `if mode == 'train':` (or `'eval'`) for one parameter `mode`
        (CLEVR-IEP's `set_mode(mode, models)`), or passes that parameter on as the flag
        (`m.train(training)`). name -> (parameter, position among the arguments a caller
        writes, value -> mode, the parameter's constant default or `_NO_DEFAULT`)."""
        found: dict[str, tuple[str, int, dict[object, str], object]] = {}
        source = self.ctx.source
        if not (mode_text(source, "eval") and mode_text(source, "train")):
            return found
        per_function: dict[int, tuple[ast.FunctionDef | ast.AsyncFunctionDef, list[ast.Call]]] = {}
        for call in self.calls_named(("train", "eval", *MODE_SETTERS)):
            fn = self._scope_key(call)
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                per_function.setdefault(id(fn), (fn, []))[1].append(call)
        for fn, calls in per_function.values():
            if len(self.functions.get(fn.name, [])) != 1:
                continue
            params = [a.arg for a in [*fn.args.posonlyargs, *fn.args.args]]
            if isinstance(self.ctx.parents.get(fn), ast.ClassDef) and not any(
                isinstance(d, ast.Name) and d.id == "staticmethod" for d in fn.decorator_list
            ):
                params = params[1:]  # `self`/`cls`: not among the arguments a caller writes
            dispatch = self._dispatch(fn, calls, params)
            if dispatch is not None:
                found[fn.name] = (
                    dispatch[0],
                    params.index(dispatch[0]),
                    dispatch[1],
                    _constant_default(fn, dispatch[0]),
                )
        return found

    def _dispatch(
        self,
        fn: ast.FunctionDef | ast.AsyncFunctionDef,
        calls: list[ast.Call],
        params: list[str],
    ) -> tuple[str, dict[object, str]] | None:
        """(parameter, value -> mode) when each of `fn`'s mode calls is chosen by one
        parameter: under `if parameter == value:`, or given it as the flag."""
        modes: dict[object, str] = {}
        parameter: str | None = None
        for call in calls:
            mode = self.mode_method(call)
            if mode is None:
                continue
            flag = call.args[0] if len(call.args) == 1 and not call.keywords else None
            chosen: dict[object, str]
            if isinstance(flag, ast.Name) and flag.id in params:
                name, chosen = flag.id, {True: "train", False: "eval"}
            else:
                guard = self._constant_guard(call, fn)
                if guard is None:
                    return None
                name, chosen = guard[0], {guard[1]: mode}
            if parameter not in (None, name):
                return None
            parameter = name
            for value, picked in chosen.items():
                if modes.setdefault(value, picked) != picked:
                    return None
        if parameter is None or parameter not in params or len(set(modes.values())) < 2:
            return None
        return parameter, modes

    def _constant_guard(
        self, call: ast.Call, fn: ast.FunctionDef | ast.AsyncFunctionDef
    ) -> tuple[str, object] | None:
        """(parameter, value) of the nearest `if parameter == value:` around `call` in `fn`'s
        body, the call in its body (not its else)."""
        child: ast.AST = call
        for anc in self.ctx.ancestors(call):
            if anc is fn:
                return None
            if isinstance(anc, ast.If) and child in anc.body:
                test = anc.test
                if (
                    isinstance(test, ast.Compare)
                    and len(test.ops) == 1
                    and isinstance(test.ops[0], ast.Eq)
                    and isinstance(test.left, ast.Name)
                    and isinstance(test.comparators[0], ast.Constant)
                ):
                    return test.left.id, test.comparators[0].value
            child = anc
        return None

    def dispatched_mode(self, call: ast.Call) -> str | None:
        """The mode a call of a local mode dispatcher sets when the argument it dispatches on
        is a constant (`set_mode('eval', models)`: 'eval'), else None."""
        dispatchers = self._mode_dispatchers
        if not dispatchers:
            return None
        callee = local_callee(call)
        if callee not in dispatchers:
            return None
        parameter, position, modes, default = dispatchers[callee]
        given = next((k.value for k in call.keywords if k.arg == parameter), None)
        if given is None and len(call.args) > position:
            given = call.args[position]
        if isinstance(given, ast.Constant):
            return modes.get(given.value)
        unpacked = any(isinstance(a, ast.Starred) for a in call.args) or any(
            k.arg is None for k in call.keywords
        )
        if given is None and not unpacked and default is not _NO_DEFAULT:
            return modes.get(default)  # `model.train()` of an override `train(self, mode=True)`
        return None

    def functions_reaching(self, method: str) -> frozenset[str]:
        """Local functions that call `.method()` ('eval' or 'train') directly or transitively."""
        if method in self._reaching:
            return self._reaching[method]
        if not mode_text(self.ctx.source, method):
            self._reaching[method] = frozenset()
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

    def methods_called(self, body: list[ast.stmt] | ast.AST) -> set[str]:
        """Mode methods a body calls directly: 'eval', 'train' (`train(False)` counts as eval)."""
        found: set[str] = set()
        for node in walk_scope(body):
            if isinstance(node, ast.Call):
                mode = self.mode_method(node)
                if mode is not None:
                    found.add(mode)
        return found

    def calls_containing_mode(self, method: str) -> frozenset[int]:
        """ids of the calls whose own subtree (as `methods_called` walks it) holds a
        `.method()` call: the only calls `methods_called` can answer `method` for. Found by
        climbing from each such call, so rules need not walk every call's subtree."""
        memo = self.ctx.memo_table("reachability.calls_containing_mode")
        if method not in memo and not mode_text(self.ctx.source, method):
            memo[method] = frozenset()
        if method not in memo:
            found: set[int] = set()
            for call in self.nodes(ast.Call):
                if self.mode_method(call) != method:
                    continue
                node: ast.AST | None = call
                while node is not None and not isinstance(node, _SCOPES):
                    if isinstance(node, ast.Call):
                        if id(node) in found:
                            break
                        found.add(id(node))
                    node = self.ctx.parents.get(node)
            memo[method] = frozenset(found)
        return memo[method]  # type: ignore[no-any-return]

    def reaches_method(
        self, body: list[ast.stmt] | ast.AST, method: str, excluding: ast.AST | None = None
    ) -> bool:
        """Whether `body` calls `.method()` directly or through local functions it calls
        (other than the call `excluding`).

        Answered from the module's few calls that do either (most modules have none), each
        climbing to see whether `walk_scope(body)` would reach it: asked for every statement
        list before every call of a project function, walking each list cost ~60% of the pass
        on torch's sources."""
        if isinstance(body, list) and not body:
            return False
        parents = self.ctx.parents
        first = body[0] if isinstance(body, list) else body
        if first is not self.ctx.tree and first not in parents:
            return self._walk_reaches(body, method, excluding)  # not a part of this tree
        hits = self.calls_reaching(method)
        if not hits:
            return False
        roots = {id(node) for node in body} if isinstance(body, list) else {id(body)}
        for call in hits:
            if call is excluding:
                continue
            node: ast.AST | None = call
            while node is not None:
                if id(node) in roots:
                    return True
                if isinstance(node, _SCOPES):
                    break  # walk_scope does not descend into a nested scope
                node = parents.get(node)
        return False

    def _walk_reaches(
        self, body: list[ast.stmt] | ast.AST, method: str, excluding: ast.AST | None = None
    ) -> bool:
        reaching = self.functions_reaching(method)
        return any(
            isinstance(node, ast.Call)
            and node is not excluding
            and self._call_reaches(node, method, reaching)
            for node in walk_scope(body)
        )

    def _call_reaches(self, call: ast.Call, method: str, reaching: frozenset[str]) -> bool:
        if self.mode_method(call) == method:
            return True
        dispatched = self.dispatched_mode(call)
        if dispatched is not None:
            return dispatched == method
        return local_callee(call) in reaching

    def calls_reaching(self, method: str) -> list[ast.Call]:
        """The module's calls of `.method()` or of a local function that reaches it."""
        memo = self.ctx.memo_table("reachability.calls_reaching")
        if method not in memo and not mode_text(self.ctx.source, method):
            memo[method] = []
        if method not in memo:
            reaching = self.functions_reaching(method)
            memo[method] = [
                call for call in self.nodes(ast.Call) if self._call_reaches(call, method, reaching)
            ]
        return memo[method]  # type: ignore[no-any-return]
