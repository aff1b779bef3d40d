"""no-torch-seed: an entry script trains or samples without seeding torch."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import PurePosixPath
from typing import Any, ClassVar

from torchdoctor.agent.checks.analysis.project import project_symbol
from torchdoctor.agent.checks.analysis.vocabulary import (
    ALL_LIBRARY_SEEDERS,
    DISPLAY_LIBRARIES,
    GLOBAL_GENERATORS,
    NUMPY_DRAWING_FUNCTIONS,
    OWN_STATE_GENERATORS,
)
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.checks.loops import nodes_of, walk_scope, walk_tree
from torchdoctor.agent.checks.patterns import has_main_guard, is_main_guard, module_level
from torchdoctor.agent.checks.smoke_tests import (
    is_dataset_demo,
    is_model_smoke_test,
)
from torchdoctor.agent.models import Severity

_SEEDERS = frozenset({"torch.manual_seed", "torch.random.manual_seed"}) | ALL_LIBRARY_SEEDERS
_SEEDER_WORDS = frozenset(name.rpartition(".")[2] for name in _SEEDERS)
"""The seeders' own names: a script seeded by `default_setup(cfg, args)` (detectron2) or
`improve_reproducibility(0)` says "seed" nowhere."""
# They seed the GPUs' generators only: weights initialised on the CPU before `.cuda()`, the
# DataLoader's shuffling and CPU dropout still draw from an unseeded generator.
_CUDA_SEEDERS = frozenset({"torch.cuda.manual_seed_all", "torch.cuda.manual_seed"})
_SEED_METHODS = frozenset({"manual_seed", "seed_everything", "set_seed"})
_TORCH_RANDOM = frozenset(
    {"rand", "randn", "randint", "randperm", "bernoulli", "multinomial", "normal", "dropout"}
)
# torch.nn classes that hold no randomly initialised weights: containers, activations,
# pooling, padding, reshaping and losses, except AdaptiveLogSoftmaxWithLoss (its linear layers
# are drawn at random); normalisation layers (ones and zeros); the data-parallel wrappers of a
# model built elsewhere. Building `nn.Sequential(*loaded_blocks)` draws nothing.
_PARAMETER_FREE = re.compile(
    r"^(Sequential|ModuleList|ModuleDict|ParameterList|ParameterDict|Identity|Flatten|Unflatten"
    r"|ReLU6?|LeakyReLU|GELU|SiLU|Mish|ELU|SELU|CELU|Sigmoid|Tanh|Hardswish|Hardsigmoid"
    r"|Hardtanh|Softplus|Softmax2?d?|LogSoftmax|Upsample\w*|PixelShuffle|PixelUnshuffle"
    r"|\w*Pool[123]d|\w*Pad[123]d|(?!Adaptive)\w*Loss"
    r"|\w*Norm(\d?d)?|DataParallel|DistributedDataParallel)$"
)
_KEY = "no-torch-seed"
_DRAWS_KEY = "no-torch-seed:draws"


def _is_seed_call(ctx: ModuleContext, call: ast.Call) -> bool:
    qual = ctx.call_qualname(call)
    if qual in _SEEDERS:
        return True
    func = call.func
    return isinstance(func, ast.Attribute) and func.attr in _SEED_METHODS and qual is None


def _called_name(call: ast.Call) -> str:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return ""


class NoTorchSeed(Rule):
    """Detects an entry script (it trains, or has an `if __name__ == "__main__":` block and
    uses torch randomness) that never seeds torch: no `torch.manual_seed`, `seed_everything`
    (Lightning), `transformers.set_seed` or another helper that seeds every library
    (`zero.set_randomness`, `delu.random.seed`), in the script or in a helper of the same project
    that it imports and calls (`from utils import seed_all`), directly or through other
    helpers of the project (yolov7's `init_seeds` in utils/general.py calls
    `init_torch_seeds` of utils/torch_utils.py, which seeds), or by building an instance of a
    project class whose constructor seeds (pykan's `KAN(width, seed=1)`, an alias of
    `MultKAN`, whose `__init__` calls `torch.manual_seed(seed)`), reached through a package
    that re-exports it (`from kan import *`, `kan/__init__.py`: `from .MultKAN import *`).

    `torch.cuda.manual_seed(_all)` alone does not seed torch: it seeds the GPUs' generators,
    while the weights are drawn on the CPU before the model moves and the DataLoader
    shuffles with the CPU generator (LSTNet's main.py with its `torch.manual_seed` gone).

    Why it matters: weight initialisation, shuffling, dropout and augmentation differ on every
    run, so results cannot be reproduced, a regression cannot be bisected and two
    configurations cannot be compared on equal terms.

    Example:
        if __name__ == "__main__":
            model = Net()
            train(model, DataLoader(data, shuffle=True))

    Not reported: a script that trains nothing and only exports a model (random tensors are
    example inputs for tracing; an AOTInductor `torch._export.aot_compile` included) or only
    checks that two computations agree (`torch.testing.assert_close` after converting a
    checkpoint: lit-llama's conversion script feeds both models one random token sample).

    Fix: seed once at start-up, before building the model and the loaders:
    `torch.manual_seed(seed)` (plus `random.seed` and `np.random.seed` where the program
    draws from those generators), or
    `lightning.seed_everything(seed, workers=True)`.
    """

    id = "no-torch-seed"
    point = 5
    severity = Severity.MEDIUM
    title = "Entry script never seeds torch"
    items: ClassVar[tuple[str, ...]] = ("5.1",)

    def applies(self, ctx: ModuleContext) -> bool:
        return "torch" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        source = ctx.source
        has_seed_text = "seed" in source or any(word in source for word in _SEEDER_WORDS)
        generators = _global_generators(ctx) if "random" in source or "sklearn" in source else []
        if "torch" not in source and not has_seed_text and not generators:
            if reexports := _star_reexports(ctx):
                ctx.facts[_KEY] = {
                    "seeding_functions": [],
                    "module_seeds": False,
                    "imports": reexports,
                    "reexports": True,
                }
            return
        seeding_functions = self._seeding_functions(ctx) if has_seed_text else set()
        module_seeds = has_seed_text and any(
            isinstance(n, ast.Call) and _is_seed_call(ctx, n) for n in module_level(ctx.tree)
        )
        fact: dict[str, Any] = {
            "seeding_functions": sorted(seeding_functions),
            "module_seeds": module_seeds,
            "imports": [],
        }
        anchor = self._entry_anchor(ctx) if "torch" in source else None
        seeded = bool(seeding_functions) or module_seeds
        relays = self._relays(ctx, seeding_functions) if has_seed_text else {}
        if relays:
            fact["relays"] = relays
            fact["imports"] = self._imports(ctx)
        if anchor is not None and not seeded and not ctx.suppressed(self.id, anchor.lineno):
            calls = {_called_name(n) for n in nodes_of(ctx, ast.Call) if isinstance(n, ast.Call)}
            fact["imports"] = self._imports(ctx)
            fact["entry"] = {
                "line": anchor.lineno,
                "code": ctx.lines[anchor.lineno - 1],
                "excerpt": ctx.excerpt(anchor.lineno, anchor.lineno),
                "calls": sorted(calls - {""}),
                "cuda_only": any(
                    isinstance(n, ast.Call) and ctx.call_qualname(n) in _CUDA_SEEDERS
                    for n in nodes_of(ctx, ast.Call)
                ),
            }
        reexports = _star_reexports(ctx) if not fact["imports"] else []
        if reexports and not (seeded or relays or "entry" in fact):
            fact["imports"], fact["reexports"] = reexports, True
        if seeded or relays or "entry" in fact or fact.get("reexports"):
            ctx.facts[_KEY] = fact
        if "torch" in source or generators:
            # an entry script, or a module one imports, may draw from `random` or NumPy's
            # generator, which the seed fix must then seed besides torch's
            ctx.facts[_DRAWS_KEY] = {
                "imports": fact["imports"] or self._imports(ctx),
                "generators": generators,
            }

    @staticmethod
    def _relays(ctx: ModuleContext, seeding: set[str]) -> dict[str, list[str]]:
        """Local functions that do not seed here, with the names they call that are
        imported or local: one of them may seed in another file (a helper that calls a
        helper), which the project pass follows."""
        imported = {
            alias.asname or alias.name.split(".")[0]
            for node in nodes_of(ctx, ast.Import, ast.ImportFrom)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        }
        relays: dict[str, set[str]] = {}
        for call in nodes_of(ctx, ast.Call):
            if not isinstance(call, ast.Call) or (fn := ctx.enclosing_function(call)) is None:
                continue
            if fn.name in seeding:
                continue
            func = call.func
            root = func
            while isinstance(root, ast.Attribute):
                root = root.value
            name = _called_name(call)
            if isinstance(root, ast.Name) and (
                root.id in imported or (func is root and name in ctx.loops.functions)
            ):
                relays.setdefault(fn.name, set()).add(name)
        return {fn: sorted(names) for fn, names in relays.items()}

    @staticmethod
    def _seeding_functions(ctx: ModuleContext) -> set[str]:
        """Local functions that seed torch, directly or through other local functions."""
        calls = [n for n in nodes_of(ctx, ast.Call) if isinstance(n, ast.Call)]
        found = {
            fn.name
            for call in calls
            if _is_seed_call(ctx, call) and (fn := ctx.enclosing_function(call)) is not None
        }
        if not found:
            return found
        called_by: dict[str, set[str]] = {}
        for call in calls:
            name = _called_name(call)
            if name in ctx.loops.functions and (fn := ctx.enclosing_function(call)):
                called_by.setdefault(name, set()).add(fn.name)
        frontier = set(found)
        while frontier:
            callers = set().union(*(called_by.get(name, set()) for name in frontier))
            frontier = callers - found
            found |= frontier
        return found | _seeding_classes(ctx, found)

    @staticmethod
    def _entry_anchor(ctx: ModuleContext) -> ast.stmt | None:
        """Where an entry script starts: its main guard, or its top-level training loop, or
        the top-level call of its function that runs one (LSTNet's `for epoch in ...:
        train_loss = train(Data, ...)` with no main guard)."""
        if ctx.test_module:
            return None  # pytest runs it; its fixtures decide the seeds
        guard = next((s for s in ctx.tree.body if is_main_guard(s)), None)
        loops = ctx.loops.training_loops
        top_level = [
            loop.node
            for loop in loops
            if isinstance(loop.node, ast.For | ast.While | ast.AsyncFor)
            and ctx.enclosing_function(loop.node) is None
        ]
        if guard is None:
            if has_main_guard(ctx.tree):
                return None
            return top_level[0] if top_level else _top_level_training_call(ctx, loops)
        if loops or (
            _uses_torch_randomness(ctx)
            and not is_model_smoke_test(ctx, guard)
            and not is_dataset_demo(ctx, guard)
            and not _guard_draws_nothing(ctx, guard)
        ):
            return guard
        if _seeds_other_generators(ctx, guard):
            return guard  # it means to be reproducible, and torch is left out
        return None

    @staticmethod
    def _imports(ctx: ModuleContext) -> list[list[str]]:
        """[module, imported name or ''] pairs, relative imports made absolute-ish."""
        pairs: list[list[str]] = []
        for node in nodes_of(ctx, ast.Import, ast.ImportFrom):
            if isinstance(node, ast.Import):
                pairs += [[alias.name, ""] for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                pairs += [[module, alias.name] for alias in node.names]
        return pairs

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        mine = {path: f[_KEY] for path, f in facts.items() if _KEY in f}
        files = _ProjectFiles(mine)
        seeders = _seeders_through_helpers(mine, files)
        draws = {path: f[_DRAWS_KEY] for path, f in facts.items() if _DRAWS_KEY in f}
        drawing_files = _ProjectFiles(draws)
        import_seeded = _seeded_at_import(mine, draws, drawing_files)
        findings: list[RawFinding] = []
        for path, fact in mine.items():
            entry = fact.get("entry")
            if entry is None or _seeded_through_imports(
                path, fact, entry["calls"], mine, files, seeders
            ):
                continue
            if path in draws and any(
                target in import_seeded
                for target, _ in drawing_files.links(path, draws[path], draws)[1]
            ):
                continue
            findings.append(
                RawFinding(
                    rule=cls.id,
                    file=path,
                    line=entry["line"],
                    end_line=entry["line"],
                    code=entry["code"],
                    message="this entry script never seeds torch (torch.manual_seed / "
                    "seed_everything): runs are not reproducible"
                    + (
                        " (torch.cuda.manual_seed seeds only the GPUs' generators: weights "
                        "initialised on the CPU and the loader's shuffling still vary)"
                        if entry.get("cuda_only")
                        else ""
                    ),
                    severity=cls.severity,
                    excerpt=entry["excerpt"],
                    data={"generators": _generators_reached(path, draws, drawing_files)},
                )
            )
        return findings


def _seeding_classes(ctx: ModuleContext, seeding: set[str]) -> set[str]:
    """Classes whose constructor seeds torch (pykan's `MultKAN.__init__` calls
    `torch.manual_seed(seed)`), and the module-level aliases of them (`KAN = MultKAN`):
    building one seeds, as calling a seeding helper does."""
    if "__init__" not in seeding:
        return set()
    classes: set[str] = set()
    for cls in nodes_of(ctx, ast.ClassDef):
        assert isinstance(cls, ast.ClassDef)
        init = next(
            (s for s in cls.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"),
            None,
        )
        if init is not None and any(
            isinstance(n, ast.Call) and _is_seed_call(ctx, n) for n in walk_scope(init.body)
        ):
            classes.add(cls.name)
    for stmt in ctx.tree.body:
        if (
            isinstance(stmt, ast.Assign)
            and isinstance(stmt.value, ast.Name)
            and stmt.value.id in classes
        ):
            classes |= {t.id for t in stmt.targets if isinstance(t, ast.Name)}
    return classes


def _star_reexports(ctx: ModuleContext) -> list[list[str]]:
    """A package's `__init__.py` that only passes its modules' names on (`from .MultKAN import
    *`): the imports through which an entry script's `from kan import *` reaches them."""
    if not ctx.path.replace("\\", "/").endswith("__init__.py"):
        return []
    return [
        ["." * node.level + (node.module or ""), "*"]
        for node in ctx.tree.body
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names)
    ]


def _top_level_training_call(ctx: ModuleContext, loops: list[Any]) -> ast.stmt | None:
    """The first statement run at import time that calls a module-level function holding a
    training loop (a script with no main guard whose epochs call `train(...)`)."""
    trainers = {
        fn.name
        for loop in loops
        if (fn := ctx.enclosing_function(loop.node)) is not None and fn in ctx.tree.body
    }
    if not trainers:
        return None
    for node in module_level(ctx.tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in trainers
        ):
            return next(a for a in ctx.ancestors(node) if isinstance(a, ast.stmt))
    return None


def _global_generators(ctx: ModuleContext) -> list[str]:
    """The process-wide generators this module draws from (`random.shuffle(items)`,
    `np.random.rand(3)`, a draw passed on by name: `key=random.random`); constructing an
    independent generator (`random.Random(0)`, `np.random.default_rng()`) or only seeding one
    is not a draw. A library function that draws from NumPy's when given no `random_state`
    (`train_test_split(files, test_size=0.1)`) draws too."""
    found: set[str] = set()
    for call in nodes_of(ctx, ast.Call):
        assert isinstance(call, ast.Call)
        callee = ctx.flow.qualname_of(call)  # resolved once (and shared with other rules)
        if callee in NUMPY_DRAWING_FUNCTIONS and not any(
            k.arg == "random_state"
            and not (isinstance(k.value, ast.Constant) and k.value.value is None)
            for k in call.keywords
        ):
            found.add("numpy")
        for expr in (call.func, *call.args, *(k.value for k in call.keywords)):
            if not isinstance(expr, ast.Name | ast.Attribute):
                continue
            qual = (callee if expr is call.func else ctx.qualname(expr)) or ""
            namespace, _, name = qual.rpartition(".")
            for library, draws_in in GLOBAL_GENERATORS.items():
                if namespace == draws_in and name and qual not in OWN_STATE_GENERATORS:
                    found.add(library)
    return sorted(found)


def _generators_reached(
    path: str, draws: dict[str, dict[str, Any]], files: _ProjectFiles
) -> list[str]:
    """The global generators the entry script at `path` draws from, itself or through the
    project's modules it imports, directly or through others: those its seed fix seeds
    besides torch's."""
    found: set[str] = set()
    seen = {path}
    frontier = [path]
    while frontier:
        current = frontier.pop()
        found.update(draws[current]["generators"])
        for target, _ in files.links(current, draws[current], draws)[1]:
            if target not in seen:
                seen.add(target)
                frontier.append(target)
    return sorted(found)


def _seeders_through_helpers(
    mine: dict[str, dict[str, Any]], files: _ProjectFiles
) -> dict[str, set[str]]:
    """Per file, the functions that seed torch: those that seed there, then, until nothing
    changes, those calling a local seeder or an imported one (a chain of helpers across
    files)."""
    seeders = {path: set(fact.get("seeding_functions", [])) for path, fact in mine.items()}
    relaying = [(path, fact) for path, fact in mine.items() if fact.get("relays")]
    for _ in range(len(relaying) + 1):
        changed = False
        for path, fact in relaying:
            for fn, calls in fact["relays"].items():
                if fn in seeders[path]:
                    continue
                if set(calls) & seeders[path] or _seeded_through_imports(
                    path, fact, calls, mine, files, seeders
                ):
                    seeders[path].add(fn)
                    changed = True
        if not changed:
            break
    return seeders


def _seeded_at_import(
    mine: dict[str, dict[str, Any]], draws: dict[str, dict[str, Any]], files: _ProjectFiles
) -> set[str]:
    """The project files whose import seeds torch: those seeding at module level, and those
    importing one, at any depth (`from utils import *` in the script, `from parameters import
    *` in utils, `torch.manual_seed(0)` in parameters: an RNN encoder-decoder tutorial)."""
    seeded = {path for path, fact in mine.items() if fact.get("module_seeds")}
    grown = bool(seeded)
    while grown:
        grown = False
        for path, fact in draws.items():
            if path not in seeded and any(
                target in seeded for target, _ in files.links(path, fact, draws)[1]
            ):
                seeded.add(path)
                grown = True
    return seeded


def _seeded_through_imports(
    path: str,
    fact: dict[str, Any],
    calls: list[str],
    mine: dict[str, dict[str, Any]],
    files: _ProjectFiles,
    seeders: dict[str, set[str]],
    depth: int = 0,
) -> bool:
    imported_seeds, links = files.links(path, fact, mine)
    if imported_seeds:
        return True
    called = set(calls)
    for target, imported in links:
        if mine[target].get("reexports") and depth < 3:
            # `from kan import *` (or `from kan import KAN`) through the package's `from
            # .MultKAN import *`
            if _seeded_through_imports(
                target, mine[target], calls, mine, files, seeders, depth + 1
            ):
                return True
            continue
        seeding = seeders.get(target)
        if not seeding:
            continue
        if imported in ("", "*"):
            if seeding & called:
                return True
        elif imported in seeding and imported in called:
            return True
    return False


class _ProjectFiles:
    """The project's files by the names an import reaches them with, indexed once: resolving
    each import by a scan of every file, again on each round of `_seeders_through_helpers`,
    made this rule most of the static pass's cost on a large project (torch's own sources:
    193k scans of 2,285 paths).

    An absolute import `a.b` reaches the first file (in the facts' order) named `a/b.py` or
    `a/b/__init__.py`, or ending in `/a/b.py` or `/a/b/__init__.py`; a relative one, the
    first whose path (or the path without a leading `./`) is the module's file or package
    `__init__.py` beside the importing file."""

    def __init__(self, paths: dict[str, Any]) -> None:
        self._by_name: dict[str, str] = {}
        self._by_path: dict[str, tuple[int, str]] = {}
        self._resolved: dict[tuple[str, str], str | None] = {}
        self._links: dict[str, tuple[bool, list[tuple[str, str]]]] = {}
        for order, path in enumerate(paths):
            for key in (path, path.lstrip("./")):
                self._by_path.setdefault(key, (order, path))
            posix = path.replace("\\", "/")
            for stem in (posix.removesuffix(".py"), posix.removesuffix("/__init__.py")):
                if stem == posix:
                    continue
                for start in [0, *(i + 1 for i, c in enumerate(stem) if c == "/")]:
                    self._by_name.setdefault(stem[start:], path)

    def links(
        self, path: str, fact: dict[str, Any], mine: dict[str, dict[str, Any]]
    ) -> tuple[bool, list[tuple[str, str]]]:
        """The other project files `path`'s imports reach, each with the name imported from
        it ('' for the module itself), and whether one of them seeds torch at module level:
        fixed for the whole project pass, which asks them of each file once per round of
        `_seeders_through_helpers` (torch's sources: 1.7M resolutions for 10k asks)."""
        known = self._links.get(path)
        if known is None:
            links: list[tuple[str, str]] = []
            for module, name in fact.get("imports", []):
                target = self.resolve(path, module)
                imported = name
                if target is None and name and name != "*":  # `from pkg import utils`
                    joined = module + name if module.endswith(".") else f"{module}.{name}"
                    target, imported = self.resolve(path, joined), ""
                if target is not None and target != path:
                    links.append((target, imported))
            seeds = any(mine[target].get("module_seeds") for target, _ in links)
            known = self._links[path] = (seeds, links)
        return known

    def resolve(self, path: str, module: str) -> str | None:
        """The project file `module`, imported in `path`, names (each asked once: the
        helpers' rounds ask the same imports again)."""
        key = (path, module)
        if key not in self._resolved:
            self._resolved[key] = self._resolve(path, module)
        return self._resolved[key]

    def _resolve(self, path: str, module: str) -> str | None:
        level = len(module) - len(module.lstrip("."))
        dotted = module.lstrip(".")
        if not level:
            return self._by_name.get(dotted.replace(".", "/"))
        parents = PurePosixPath(path).parents
        base = parents[level - 1] if level - 1 < len(parents) else PurePosixPath()
        stem = str(base / dotted.replace(".", "/")) if dotted else str(base)
        found = [
            self._by_path[s] for s in (f"{stem}.py", f"{stem}/__init__.py") if s in self._by_path
        ]
        return min(found)[1] if found else None


def _guard_draws_nothing(ctx: ModuleContext, guard: ast.stmt) -> bool:
    """The main block, with the local functions it runs, neither runs a model nor draws
    torch random values, and calls nothing of the project's other files: a library
    module's demo (BiSeNet's lr_scheduler.py plots a schedule over a throwaway Conv2d; its
    dataset file prints one batch's sizes), whose output no seed changes. A local function
    handed on by name (`mp.spawn(run, ...)`, `rpc_sync(..., run_trainer)`) runs too, and
    so do the methods of a local class it names."""
    bodies: list[ast.AST] = [guard]
    seen: set[int] = set()
    index = 0
    while index < len(bodies) and len(bodies) < _MAX_REACHED:
        scope = bodies[index]
        index += 1
        for node in walk_scope(_statements(scope)):
            if isinstance(node, ast.Call):
                if ctx.flow.is_model_call(node) or _opaque(ctx, node):
                    return False
                qual = ctx.call_qualname(node) or ""
                if qual.startswith("torch.") and qual.rsplit(".", 1)[-1] in _TORCH_RANDOM:
                    return False
            if not (isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)):
                continue
            named: list[ast.AST] = list(ctx.flow.functions.get(node.id, []))
            cls = ctx.flow.classes.get(node.id)
            if cls is not None:
                named += [
                    n for n in cls.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
                ]
            for fn in named:
                if id(fn) not in seen:
                    seen.add(id(fn))
                    bodies.append(fn)
    return index >= len(bodies)


_MAX_REACHED = 200


def _statements(scope: ast.AST) -> list[ast.stmt] | ast.AST:
    return scope.body if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef) else scope


def _opaque(ctx: ModuleContext, call: ast.Call) -> bool:
    """A call of something imported that may run a model or draw random values out of
    sight: not torch's, the standard library's or a display library's."""
    symbol = project_symbol(ctx, call.func)
    if symbol is None:
        return False
    package = symbol.partition(".")[0]
    return package not in sys.stdlib_module_names and package not in DISPLAY_LIBRARIES


_OTHER_SEEDS = frozenset({"numpy.random.seed", "random.seed"})


def _seeds_other_generators(ctx: ModuleContext, guard: ast.stmt) -> bool:
    """The main block of a script that imports torch seeds NumPy's or Python's generator
    (`np.random.seed(args.seed)`): it means its runs to repeat, though the torch work it
    starts may all happen in other files (TD3's `main.py`, its networks built by
    `TD3.TD3(...)`)."""
    if "torch" not in ctx.imports.aliases:
        return False
    return any(
        isinstance(node, ast.Call) and ctx.call_qualname(node) in _OTHER_SEEDS
        for node in walk_tree(guard)
    )


def _uses_torch_randomness(ctx: ModuleContext) -> bool:
    if "torch" not in ctx.source:
        return False
    loads_weights = "load_state_dict" in ctx.source or "from_pretrained" in ctx.source
    exports = _exports_only(ctx) or _verifies_only(ctx)
    for node in nodes_of(ctx, ast.Call):
        if isinstance(node, ast.Call):
            qual = ctx.call_qualname(node) or ""
            if qual.startswith("torch.") and qual.rsplit(".", 1)[-1] in _TORCH_RANDOM:
                if exports:
                    continue  # example inputs for tracing: their values shape nothing
                return True
            layer = qual.rsplit(".", 1)[-1]
            if (
                qual.startswith("torch.nn.")
                and layer[:1].isupper()
                and not _PARAMETER_FREE.match(layer)
                and not loads_weights
            ):
                return True  # building layers draws random initial weights (unless overwritten)
            if qual.endswith("DataLoader") and any(
                k.arg == "shuffle" and not _false(k.value) for k in node.keywords
            ):
                return True
    return False


_EXPORTERS = frozenset(
    {
        "torch.onnx.export",
        "torch.onnx.dynamo_export",
        "torch.jit.trace",
        "torch.export.export",
        # ahead-of-time compilation to a shared library (TorchServe's AOTInductor examples)
        "torch._export.aot_compile",
        "torch._inductor.aot_compile",
        "torch._inductor.aoti_compile_and_package",
    }
)


def _exports_only(ctx: ModuleContext) -> bool:
    """The script exports a model (ONNX, a trace, `torch.export`) and trains nothing: random
    tensors in it are example inputs, which fix shapes, not results."""
    if ctx.loops.training_loops:
        return False
    return any(
        isinstance(n, ast.Call) and ctx.call_qualname(n) in _EXPORTERS
        for n in nodes_of(ctx, ast.Call)
    )


_EQUIVALENCE_CHECKS = frozenset(
    {
        "torch.testing.assert_close",
        "torch.testing.assert_allclose",
        "torch.allclose",
        "numpy.testing.assert_allclose",
        "numpy.allclose",
    }
)


def _verifies_only(ctx: ModuleContext) -> bool:
    """The script trains nothing and every torch random draw in it is a probe input of a
    check that two computations agree: bound to a name that only feeds calls whose results
    go to `torch.testing.assert_close`/`allclose` or an `assert` (lit-llama's checkpoint
    conversion compares the converted and the original model on one random token sample).
    The check's verdict does not depend on the sample's values."""
    if ctx.loops.training_loops or not any(
        isinstance(n, ast.Call) and ctx.call_qualname(n) in _EQUIVALENCE_CHECKS
        for n in nodes_of(ctx, ast.Call)
    ):
        return False
    draws = [
        n
        for n in nodes_of(ctx, ast.Call)
        if isinstance(n, ast.Call)
        and (qual := ctx.call_qualname(n) or "").startswith("torch.")
        and qual.rsplit(".", 1)[-1] in _TORCH_RANDOM
    ]
    return bool(draws) and all(_probe(ctx, draw) for draw in draws)


def _probe(ctx: ModuleContext, draw: ast.Call) -> bool:
    """`sample = torch.randint(...)` whose every read is an argument of a call that is
    verified (`out = model(sample)` then `assert_close(out, ...)`)."""
    reads = _reads_of_binding(ctx, draw)
    return bool(reads) and all(_feeds_a_check(ctx, read) for read in reads)


def _feeds_a_check(ctx: ModuleContext, read: ast.Name) -> bool:
    call = ctx.parents.get(read)
    if not isinstance(call, ast.Call) or read not in call.args:
        return False
    if _verified(ctx, call):
        return True
    results = _reads_of_binding(ctx, call)
    return bool(results) and all(_verified(ctx, r) for r in results)


def _reads_of_binding(ctx: ModuleContext, value: ast.AST) -> list[ast.Name]:
    """The reads of the name `value` is bound to (`name = value`, through subscripts of it:
    `out = model(x)["logits"]`), in its function; [] when it is not bound to one name."""
    node, parent = value, ctx.parents.get(value)
    while isinstance(parent, ast.Subscript) and parent.value is node:
        node, parent = parent, ctx.parents.get(parent)
    if not (
        isinstance(parent, ast.Assign)
        and len(parent.targets) == 1
        and isinstance(parent.targets[0], ast.Name)
    ):
        return []
    name = parent.targets[0].id
    fn = ctx.enclosing_function(parent)
    scope: list[ast.stmt] = fn.body if fn is not None else ctx.tree.body
    return [
        n
        for n in walk_scope(scope)
        if isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Load)
    ]


def _verified(ctx: ModuleContext, node: ast.AST) -> bool:
    """Inside an `assert` or an argument of an equivalence check."""
    for ancestor in ctx.ancestors(node):
        if isinstance(ancestor, ast.Assert):
            return True
        if isinstance(ancestor, ast.Call) and ctx.call_qualname(ancestor) in _EQUIVALENCE_CHECKS:
            return True
        if isinstance(ancestor, ast.stmt):
            return False
    return False


def _false(value: ast.expr) -> bool:
    return isinstance(value, ast.Constant) and value.value in (False, None, 0)
