"""Which model the artifacts exercise: the root module an instrumented run called, the class
that defines it in the audited files, and a constructor call a test can repeat.

The constructor comes from the audited code itself: a call of the class whose arguments are
literals, or names bound to literals in the same scope (`vocab, context = 4096, 256`); else the
class's own defaults. Nothing is guessed: a model that cannot be rebuilt that way is named in
the reason the artifact is not offered.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator

from pydantic import BaseModel, ConfigDict, ValidationError

from torchdoctor.agent.artifacts.models import ModelTarget, TensorSpec
from torchdoctor.agent.evidence.probe_schema import FlowCall, TensorInfo
from torchdoctor.agent.probing import RunSummary
from torchdoctor.agent.workspace import Workspace

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PLAIN_PATH = re.compile(r"[^\w./-]")
"""What may not go into the generated file's docstring (the run's script name)."""


class NoTarget(BaseModel):
    """Why no model can be exercised (a sentence naming what is missing)."""

    model_config = ConfigDict(extra="forbid")

    reason: str


def find_target(workspace: Workspace, runs: list[RunSummary]) -> ModelTarget | NoTarget:
    """The first run's root model that the audited files define and a test can rebuild."""
    observed = [(run, call) for run in runs for call in run.dataflow.calls if call.depth == 0]
    if not observed and runs:
        ran = "; ".join(
            f"`{r.command}`: {r.outcome}" + (f" ({_first_sentence(r.error)})" if r.error else "")
            for r in runs
        )
        return NoTarget(reason=f"no instrumented run called a model ({ran})")
    if not observed:
        return NoTarget(
            reason="needs an instrumented run that calls a model (pass --run 'python train.py')"
        )
    reasons: list[str] = []
    for run, call in observed:
        found = _target_for(workspace, run.script, call)
        if isinstance(found, ModelTarget):
            return found
        reasons.append(found.reason)
    return NoTarget(reason=reasons[0])


def _first_sentence(error: str) -> str:
    """`UnpicklingError: Weights only load failed.` of torch.load's paragraph: the reason is
    repeated on every item the artifacts speak to, the run's finding has the rest."""
    head, dot, rest = error.partition(". ")
    return f"{head}." if dot and rest else error


def _target_for(workspace: Workspace, script: str, call: FlowCall) -> ModelTarget | NoTarget:
    class_name = call.type
    defined = _defining_file(workspace, class_name)
    if defined is None:
        return NoTarget(
            reason=f"the model class {class_name} is not defined in the audited files (a class "
            "of torch or another library): the artifacts are written for a model class of the "
            "project"
        )
    path, tree, node = defined
    module = _module_name(path)
    if module is None:
        return NoTarget(reason=f"{path} cannot be imported by a test (not a module name)")
    if not _import_is_quiet(tree):
        return NoTarget(
            reason=f"importing {path} runs code at module level: put it under "
            "`if __name__ == '__main__':` so a test can import the model"
        )
    constructor = _constructor(workspace, class_name, node)
    if constructor is None:
        return NoTarget(
            reason=f"{class_name}'s constructor needs arguments that no call in the code gives "
            "as literals"
        )
    if not call.inputs:
        return NoTarget(reason=f"the run called {class_name} without tensor arguments")
    try:
        return ModelTarget(
            file=path,
            module=module,
            class_name=class_name,
            constructor=constructor,
            inputs=[_spec(t) for t in call.inputs],
            outputs=[_spec(t) for t in call.outputs],
            script=_PLAIN_PATH.sub("_", script),
        )
    except ValidationError:
        return NoTarget(reason=f"the run recorded a dtype torch does not have for {class_name}")


def _spec(info: TensorInfo) -> TensorSpec:
    return TensorSpec(shape=list(info.shape), dtype=info.dtype, device=info.device)


def _parsed(workspace: Workspace) -> Iterator[tuple[str, ast.Module]]:
    for source in workspace.files:
        if not source.path.endswith(".py") or "class " not in source.text:
            continue
        try:
            yield source.path, ast.parse(source.text)
        except (SyntaxError, ValueError, RecursionError):
            continue


def _defining_file(
    workspace: Workspace, class_name: str
) -> tuple[str, ast.Module, ast.ClassDef] | None:
    for path, tree in _parsed(workspace):
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == class_name:
                return path, tree, node
    return None


def _module_name(path: str) -> str | None:
    parts = path.removesuffix(".py").split("/")
    return ".".join(parts) if all(_IDENTIFIER.match(p) for p in parts) else None


_QUIET = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _import_is_quiet(tree: ast.Module) -> bool:
    """Importing runs definitions and constant bindings only; the rest sits under a
    `__main__` guard."""
    for node in tree.body:
        if isinstance(node, _QUIET) or _is_main_guard(node):
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring
        if isinstance(node, ast.Assign | ast.AnnAssign) and not any(
            isinstance(n, ast.Call) and not _is_path_call(n) for n in ast.walk(node)
        ):
            continue
        return False
    return True


def _is_path_call(node: ast.Call) -> bool:
    """`Path(...)`, `os.path.join(...)`, `os.environ.get(...)`: bindings without effects."""
    text = ast.unparse(node.func)
    return text in {"Path", "pathlib.Path", "os.path.join", "os.environ.get", "os.getenv"}


def _is_main_guard(node: ast.stmt) -> bool:
    if not isinstance(node, ast.If):
        return False
    names = {n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)}
    consts = {n.value for n in ast.walk(node.test) if isinstance(n, ast.Constant)}
    return "__name__" in names and "__main__" in consts


def _constructor(workspace: Workspace, class_name: str, node: ast.ClassDef) -> str | None:
    for _path, tree in _parsed(workspace):
        for scope, call in _calls_of(tree, class_name):
            rebuilt = _literal_call(class_name, call, _literal_bindings(scope))
            if rebuilt is not None:
                return rebuilt
    return f"{class_name}()" if _defaults_suffice(node) else None


def _calls_of(tree: ast.Module, class_name: str) -> Iterator[tuple[ast.AST, ast.Call]]:
    scopes: list[ast.AST] = [tree]
    scopes += [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    for scope in scopes:
        for node in _walk_scope(scope):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == class_name
            ):
                yield scope, node


def _walk_scope(scope: ast.AST) -> Iterator[ast.AST]:
    """The scope's own nodes, not those of functions or classes nested in it."""
    stack = list(ast.iter_child_nodes(scope))
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            stack.extend(ast.iter_child_nodes(node))


def _literal_bindings(scope: ast.AST) -> dict[str, str]:
    """Names bound once in the scope to a literal (tuple unpacking included)."""
    bound: dict[str, list[str]] = {}
    for node in _walk_scope(scope):
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        target, value = node.targets[0], node.value
        pairs: list[tuple[ast.expr, ast.expr]] = [(target, value)]
        if (
            isinstance(target, ast.Tuple)
            and isinstance(value, ast.Tuple)
            and len(target.elts) == len(value.elts)
        ):
            pairs = list(zip(target.elts, value.elts, strict=True))
        for name, expr in pairs:
            if isinstance(name, ast.Name):
                bound.setdefault(name.id, []).append(_literal(expr) or "")
    return {name: values[0] for name, values in bound.items() if len(values) == 1 and values[0]}


def _literal(expr: ast.expr) -> str | None:
    try:
        value = ast.literal_eval(expr)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    return repr(value) if isinstance(value, int | float | str | bool | tuple | type(None)) else None


def _literal_call(class_name: str, call: ast.Call, bindings: dict[str, str]) -> str | None:
    def value(expr: ast.expr) -> str | None:
        if isinstance(expr, ast.Name):
            return bindings.get(expr.id)
        return _literal(expr)

    if any(isinstance(a, ast.Starred) for a in call.args) or any(
        k.arg is None for k in call.keywords
    ):
        return None
    args = [value(a) for a in call.args]
    kwargs = [(k.arg, value(k.value)) for k in call.keywords]
    if any(a is None for a in args) or any(v is None for _, v in kwargs):
        return None
    parts = [str(a) for a in args] + [f"{k}={v}" for k, v in kwargs]
    return f"{class_name}({', '.join(parts)})"


def _defaults_suffice(node: ast.ClassDef) -> bool:
    init = next(
        (n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None
    )
    if init is None:
        return True
    positional = [*init.args.posonlyargs, *init.args.args][1:]
    required = len(positional) - len(init.args.defaults)
    keyword_only = [d for d in init.args.kw_defaults if d is None]
    return required <= 0 and not keyword_only
