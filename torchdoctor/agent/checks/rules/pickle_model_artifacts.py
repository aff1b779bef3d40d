"""pickle-model-artifacts: model or data files loaded through pickle."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import kwarg
from torchdoctor.agent.models import Severity

_PICKLE_LOADERS = frozenset(
    {
        "pickle.load",
        "pickle.loads",
        "_pickle.load",
        "cPickle.load",
        "dill.load",
        "dill.loads",
        "cloudpickle.load",
        "cloudpickle.loads",
        "joblib.load",
        "sklearn.externals.joblib.load",
        "pandas.read_pickle",
    }
)


_DUMPERS = frozenset({"pickle.dumps", "_pickle.dumps", "dill.dumps", "cloudpickle.dumps"})


class PickleModelArtifacts(Rule):
    """Detects artifacts loaded through pickle: `pickle.load(s)`, `dill`, `cloudpickle`,
    `joblib.load`, `pandas.read_pickle`, and `numpy.load(..., allow_pickle=True)`
    (`torch.load` is covered by `torch-load-unsafe`).

    Why it matters: unpickling executes code chosen by whoever wrote the file; a model or
    dataset downloaded from a hub, a colleague or a compromised bucket can run arbitrary
    commands on the training machine. Pickles also break across library versions.

    Example:
        with open("model.pkl", "rb") as f:
            model = pickle.load(f)

    Not reported: `pickle.loads(pickle.dumps(obj))`, also through a name bound to the bytes
    (a picklability check of the program's own object: no file is read), and the bytes of
    a gathered tensor (`tensor.cpu().numpy().tobytes()`) unpickled by a function that
    pickles its own object into such a tensor (the distributed `all_gather` of arbitrary
    objects: each rank unpickles what the other ranks of the job pickled); nor a pytest
    module's loads (a test reads back the objects it pickled).

    Fix: store weights as safetensors or `state_dict` tensors (`torch.load(...,
    weights_only=True)`), arrays as `.npy` without pickle, tables as Parquet; load pickles
    only from trusted, checksummed sources.
    """

    id = "pickle-model-artifacts"
    point = 11
    severity = Severity.MEDIUM
    title = "Artifact loaded with pickle"
    items: ClassVar[tuple[str, ...]] = ("11.2",)

    def applies(self, ctx: ModuleContext) -> bool:
        return ctx.flow.imports(
            "pickle", "_pickle", "dill", "cloudpickle", "joblib", "numpy", "pandas"
        )

    def finish(self, ctx: ModuleContext) -> None:
        if _pytest_module(ctx):
            return  # a test reads back the objects it pickled (skorch's, tianshou's tests)
        if "load" in ctx.source or "pickle" in ctx.source:
            for node in ctx.flow.calls_to(_PICKLE_LOADERS | {"numpy.load"}):
                self._check(ctx, node)

    def _check(self, ctx: ModuleContext, node: ast.Call) -> None:
        qual = ctx.flow.qualname_of(node)
        if qual in _PICKLE_LOADERS and not _round_trip(ctx, node) and not _gathered(ctx, node):
            ctx.report(
                self,
                node,
                f"`{qual}` unpickles the file: loading it can run arbitrary code",
                data={"loader": qual},
            )
        elif qual == "numpy.load":
            allow = kwarg(node, "allow_pickle")
            if isinstance(allow, ast.Constant) and allow.value is True:
                ctx.report(
                    self,
                    node,
                    "numpy.load(allow_pickle=True) unpickles object arrays: loading the file "
                    "can run arbitrary code",
                    data={"loader": qual},
                )


def _pytest_module(ctx: ModuleContext) -> bool:
    """A test module by its place (`tests/`, `test_*.py`) that holds tests (`def test_...`,
    `class Test...`): spinningup's `utils/test_policy.py`, a script that replays a trained
    policy from its saved state, is no test."""
    if not ctx.test_module:
        return False
    return any(
        (isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test"))
        or (isinstance(node, ast.ClassDef) and node.name.startswith("Test"))
        for node in ast.walk(ctx.tree)
    )


def _round_trip(ctx: ModuleContext, call: ast.Call) -> bool:
    """`loads(dumps(obj))`, or `loads(blob)` with `blob = dumps(obj)`: the bytes were made
    here from a live object, so nothing from outside is unpickled."""
    if not call.args:
        return False
    data = call.args[0]
    values = ctx.flow.definitions(data) if isinstance(data, ast.Name) else [data]
    return bool(values) and all(
        isinstance(v, ast.Call) and ctx.flow.qualname_of(v) in _DUMPERS for v in values
    )


def _gathered(ctx: ModuleContext, call: ast.Call) -> bool:
    """`loads(t.cpu().numpy().tobytes()[:size])` (directly or through a name) in a function
    that also calls `pickle.dumps`: the bytes are a tensor the processes of one job
    exchanged, made from objects they pickled themselves."""
    if not call.args:
        return False
    data = call.args[0]
    values = ctx.flow.definitions(data) if isinstance(data, ast.Name) else [data]
    if not any(_tensor_bytes(v) for v in values) or not all(
        _tensor_bytes(v) or (isinstance(v, ast.Call) and ctx.flow.qualname_of(v) in _DUMPERS)
        for v in values
    ):
        return False  # the name may also hold this rank's own pickled bytes
    fn = ctx.enclosing_function(call)
    return fn is not None and any(
        isinstance(n, ast.Call) and ctx.flow.qualname_of(n) in _DUMPERS for n in ast.walk(fn)
    )


def _tensor_bytes(expr: ast.AST) -> bool:
    """`x.tobytes()`, sliced or not."""
    while isinstance(expr, ast.Subscript):
        expr = expr.value
    return (
        isinstance(expr, ast.Call)
        and isinstance(expr.func, ast.Attribute)
        and expr.func.attr == "tobytes"
    )
