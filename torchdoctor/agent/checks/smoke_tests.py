"""A model module's `__main__` block is a smoke test, not an entry script.

Library modules that define networks often end with `if __name__ == "__main__":` building the
model and calling it on random input to check shapes (vit-pytorch, denoising-diffusion and
pytorch-cifar do this in nearly every file). Nothing trains, no weights are loaded: advice
meant for entry scripts (seed torch, switch to eval() before inference) does not apply there;
nor does it in a pytest module, whose loaders and evaluations are fixtures.
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import PurePath

from torchdoctor.agent.checks.base import ModuleContext

_RANDOM_INPUTS = ("randn", "rand", "randint", "zeros", "ones", "empty")
_LOADS_WEIGHTS = ("load_state_dict", "torch.load", "from_pretrained", "load_checkpoint")


def defines_modules(ctx: ModuleContext) -> bool:
    """The module defines a network (a class deriving from `nn.Module`/`Module`)."""
    return any(
        isinstance(node, ast.ClassDef)
        and any(ast.unparse(base).endswith("Module") for base in node.bases)
        for node in ctx.tree.body
    )


def is_model_smoke_function(ctx: ModuleContext, fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """`def test(): net = DPN92(); y = net(torch.randn(1, 3, 32, 32))` at the end of a model
    module (pytorch-cifar's every model file): no parameters, random input, no weights."""
    if fn.args.args or fn.args.posonlyargs or fn.args.kwonlyargs or fn.args.vararg:
        return False
    if ctx.loops.training_loops or not defines_modules(ctx):
        return False
    text = ast.unparse(fn)
    random_input = any(f"torch.{name}(" in text for name in _RANDOM_INPUTS)
    return random_input and not any(marker in text for marker in _LOADS_WEIGHTS)


def is_model_smoke_test(ctx: ModuleContext, guard: ast.stmt) -> bool:
    """`guard` (a `__main__` block) only exercises the networks its module defines."""
    if ctx.loops.training_loops or not defines_modules(ctx):
        return False
    text = ast.unparse(guard)
    return not any(marker in text for marker in _LOADS_WEIGHTS)


def loads_weights(node: ast.AST) -> bool:
    """Whether `node`'s text loads trained weights (`torch.load(`, `load_state_dict(`, ...):
    code that runs a trained model, not a shape check of a fresh one."""
    return loads_weights_text(ast.unparse(node))


def loads_weights_text(text: str) -> bool:
    return any(marker in text for marker in _LOADS_WEIGHTS)


def is_dataset_demo(ctx: ModuleContext, guard: ast.stmt) -> bool:
    """`guard` (a `__main__` block) builds a dataset its module defines and looks at it
    (prints it, plots a shuffled batch or two) and trains nothing: no training loop, no
    backward or optimizer, no weights loaded (the Cityscapes and SBD loaders of a DeepLab
    port, a PyG `InMemoryDataset` file of GraphGPS). Which samples a run shows is all a seed
    would fix."""
    if ctx.loops.training_loops:
        return False
    datasets = {
        node.name
        for node in ctx.tree.body
        if isinstance(node, ast.ClassDef)
        and any(ast.unparse(base).endswith("Dataset") for base in node.bases)
    }
    if not datasets or not any(
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in datasets
        for node in ast.walk(guard)
    ):
        return False
    text = ast.unparse(guard)
    return not any(marker in text for marker in (*_LOADS_WEIGHTS, *_TRAINS))


_TRAINS = (".backward(", "optim.", ".step(")


_TEST_FILES = frozenset({"conftest.py", "tests.py"})
"""Whole names of test modules (`tests.py` beside a package's code; not `test.py`, which in a
training repository usually evaluates the model on its test split)."""


@lru_cache(maxsize=4096)
def is_test_module(path: str) -> bool:
    """A pytest module: by its name, or anywhere under a `tests/` folder (litgpt's
    `tests/convert/test_*.py`, LLMs-from-scratch's `tests/tests_rope_and_parts.py`).
    Remembered per path: rules ask it of every module, some once per function."""
    parts = PurePath(path).parts
    name = parts[-1] if parts else ""
    if name.startswith("test_") or name.endswith("_test.py") or name in _TEST_FILES:
        return True
    return any(part in ("tests", "test") for part in parts[:-1])


_TEST_IMPORTS = frozenset({"pytest", "unittest", "hypothesis"})
"""Modules a test suite imports (fixtures, markers, `TestCase`)."""
TEST_NAMED_SCRIPT_KEY = "scope:test-named-script"
"""Facts key of a module named like a test that is a script (see `is_test_file`), so that
project findings in it are kept as well."""


def collects_tests(tree: ast.Module) -> bool:
    """Whether a test runner finds something to run in the module: a module-level `test_*`
    function, a `Test*` class or a `TestCase` subclass, or an import of pytest, unittest or
    hypothesis anywhere in it. A `test*` function with parameters but no `test_` prefix
    (`def test(cfg)`, SlowFast's multi-view evaluation) is an evaluation entry point, not a
    test; one without parameters (`def test2():`, a gradcheck run by hand) is a test."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (
            node.name.startswith("test_")
            or (node.name.startswith("test") and not _has_parameters(node))
        ):
            return True
        if isinstance(node, ast.ClassDef) and (
            node.name.startswith("Test")
            or any(ast.unparse(base).endswith("TestCase") for base in node.bases)
        ):
            return True
    for imported in ast.walk(tree):
        if isinstance(imported, ast.Import) and any(
            alias.name.partition(".")[0] in _TEST_IMPORTS for alias in imported.names
        ):
            return True
        if (
            isinstance(imported, ast.ImportFrom)
            and not imported.level
            and (imported.module or "").partition(".")[0] in _TEST_IMPORTS
        ):
            return True
    return False


def _has_parameters(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    args = fn.args
    return bool(args.posonlyargs or args.args or args.kwonlyargs or args.vararg or args.kwarg)


def is_test_file(path: str, tree: ast.Module) -> bool:
    """`is_test_module(path)`, read with the module's content: a file named like a test
    (`test_net.py`, `eval_test.py`) outside any `tests/` folder is a script when nothing in
    it is for a test runner to collect (`collects_tests`): SlowFast's `tools/test_net.py`
    evaluates a trained model on the test split. Under a folder named for tests (`tests/`,
    `testing/`, accelerate's `test_utils/scripts/`, whose scripts its test suite launches),
    and for `conftest.py`/`tests.py`, the path alone decides."""
    if not is_test_module(path):
        return False
    parts = PurePath(path).parts
    if (parts and parts[-1] in _TEST_FILES) or any(p.startswith("test") for p in parts[:-1]):
        return True
    return collects_tests(tree)
