"""torch-load-no-map-location: a checkpoint loaded without map_location in code that may
run on CPU."""

from __future__ import annotations

import ast
import copy
import re
from typing import Any, ClassVar

from torchdoctor.agent.checks.analysis.project import (
    Pending,
    ProjectIndex,
    defer,
    imported_symbol,
    module_name,
    project_imports,
    publish_cpu_device,
)
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.checks.dataflow import identifier, kwarg
from torchdoctor.agent.checks.device_scope import is_script
from torchdoctor.agent.checks.loops import FunctionNode, walk_tree
from torchdoctor.agent.models import Severity

# A CPU fallback on a line that asks for CUDA (`"cuda" if torch.cuda.is_available() else
# "cpu"`), or after it when the conditional is wrapped inside its parentheses.
_AVAILABLE = "is_available()"
_QUOTED_CPU = re.compile(r"[\"']cpu[\"']")
_WRAPPED_ELSE_CPU = re.compile(r"[ \t]*\n\s*else\s+[\"']cpu[\"']")


# A device picked between "cpu" and "cuda" by a switch (`torch.device('cpu' if
# opt.no_cuda else 'cuda')`): the CPU is one of the paths the program takes.
_CPU_CHOICE = re.compile(
    r"[\"']cpu[\"']\s+if\b[^\n]*\belse\s+[\"']cuda"
    r"|[\"']cuda[\w:]*[\"']\s+if\b[^\n]*\belse\s+[\"']cpu[\"']"
)
# Code that branches on running on the CPU (`cuda = device.type != 'cpu'`): this file's
# own loads run there too (its helpers' loads may read caches, not checkpoints).
_CPU_BRANCH = re.compile(r"\.type\s*[!=]=\s*[\"']cpu[\"']")


def _cpu_fallback(ctx: ModuleContext) -> bool:
    """A CPU fallback next to a CUDA check, or a device chosen between the CPU and CUDA
    (`_CPU_CHOICE`, asked of a text that names the CPU); once per module (`applies` and
    `finish` both ask)."""
    memo = ctx.memo_table("torch_load_no_map_location.cpu_fallback")
    if "" not in memo:
        source = ctx.source
        memo[""] = (
            ("'cpu'" in source or '"cpu"' in source)  # `.cpu()` calls offer no device choice
            and (
                (_AVAILABLE in source and _falls_back_after_check(source))
                # both of `_CPU_CHOICE`'s patterns name CUDA and have an `else`
                or ("cuda" in source and "else" in source and bool(_CPU_CHOICE.search(source)))
            )
        )
    return bool(memo[""])


def _falls_back_after_check(source: str) -> bool:
    """A quoted "cpu" on a line with `is_available()`, or in an `else` that follows one at
    the end of its line; read only around each `is_available()` (a pattern searched over
    every line costs more than parsing a tenth of the file)."""
    start = source.find(_AVAILABLE)
    while start >= 0:
        end = start + len(_AVAILABLE)
        line_end = source.find("\n", end)
        line = slice(source.rfind("\n", 0, start) + 1, len(source) if line_end < 0 else line_end)
        if _QUOTED_CPU.search(source, line.start, line.stop) or _WRAPPED_ELSE_CPU.match(
            source, end
        ):
            return True
        start = source.find(_AVAILABLE, end)
    return False


# A command-line device option that offers the CPU (`--device` with "cpu" among its choices
# or as its default, a `--cpu` flag, a `--no-cuda`/`--disable-cuda` switch): the project runs
# on CPU on request.
_CPU_OPTION = re.compile(
    r"add_argument\(\s*[\"']--?[\w-]*device[\w-]*[\"'][^)]*[\"']cpu[\"']"
    r"|add_argument\(\s*[\"']--(cpu|use[-_]cpu|(no|disable)[-_](cuda|gpu))[\"']"
)
# A branch that decides by device. A process rank (`if rank in [-1, 0]:`, the main process
# logging) picks who loads, not where: the load still restores onto the saving device.
_CPU_KEYWORD = re.compile(r"\bdevice\s*=\s*[\"']cpu[\"']")
_DEVICE_TEST = re.compile(r"gpu|cuda|device", re.IGNORECASE)
_IN_MEMORY = re.compile(r"buffer|BytesIO|bytes|io\.", re.IGNORECASE)


class TorchLoadNoMapLocation(Rule):
    """Detects `torch.load(path)` without `map_location` in a file that chooses its device at
    run time with a CPU fallback (`"cuda" if torch.cuda.is_available() else "cpu"`, or a
    switch that moves to CUDA only when on: `if use_cuda: model = model.cuda()`), or in a
    file imported by an entry script whose command line offers the CPU (`--device` with "cpu"
    among its choices or as its default, a `--cpu` flag) or that has such a switch, or in a
    script that runs on the CPU only (it passes `device="cpu"` to its own calls and never
    names CUDA: a trained policy replayed on the CPU).

    Why it matters: `torch.load` restores every tensor on the device it was saved from. A
    checkpoint written during GPU training then fails to load on the CPU path the script
    explicitly supports ("Attempting to deserialize object on a CUDA device but
    torch.cuda.is_available() is False"), and on a multi-GPU host every process loads onto
    GPU 0.

    Also reported: a load in a checkpoint converter, a script that never names a device and
    saves what it made of the loaded checkpoint (`ckpt = torch.load(old); ...;
    torch.save(ckpt, new)`): it needs no GPU but cannot read a GPU checkpoint without one.

    Also reported: a load in a script that starts a `torch.distributed` process group
    (`init_process_group`), outside a branch only the main process takes: every process
    restores the checkpoint onto the GPU it was saved from (GPU 0), not its own local rank,
    and GPU 0 holds one copy per process (stylegan2's resume: `ckpt = torch.load(args.ckpt)`
    after `torch.cuda.set_device(args.local_rank)`).

    Also reported, in any file: a load in a function that takes a `map_location` parameter
    and does not hand it to this call (`def pt_load(path, map_location=None): ...
    torch.load(f)`: the caller's device is dropped), or a `device` parameter nothing in it
    reads (`def load_state_dict_hf(name, device=None): return torch.load(...)`) or that it
    builds the model on before loading the model's state unmapped (`model = build(cfg,
    device); model.load_state_dict(torch.load(path))`); a load on
    the CPU path of a branch on a GPU flag (the body of `if not gpu:`, the `else` of
    `if use_cuda:` or `if torch.cuda.is_available():`), where the map is needed most
    (`model.load_state_dict(torch.load(p), map_location=...)` hands the map to the wrong
    call).

    Not reported: loads with `map_location` (keyword or second argument), loads inside a
    branch that already decides by device (`if args.gpu is None: ...`, the GPU side of a
    GPU flag), in-memory buffers
    (`io.BytesIO`) but for one filled with a stored file's bytes (`io.BytesIO(f.read())`), a
    path the same function saved to just before (a state round trip), a wrapper forwarding
    `*args, **kwargs` to `torch.load`, a path a local helper saved to when the same scope
    called it earlier (`save_checkpoint(stage)` in the training loop, then
    `torch.load(get_checkpoint_path(stage))` once it ends: the best checkpoint of this run),
    a cache this code fills on the host (`if os.path.exists(fn): corpus = torch.load(fn)`
    whose `else` builds the corpus with no device in sight and saves it to `fn`), a chunk
    whose elements are copied into the object's NumPy arrays (a replay buffer's saved
    transitions), a file whose name is built from the device (`'model_%s.pt' % device`: one
    checkpoint saved per device), projects without a CPU fallback or option (GPU-only
    scripts).

    Example:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        checkpoint = torch.load("ckpt.pth")
        model.load_state_dict(checkpoint["net"])

    Fix: `torch.load(path, map_location=device)` (or `map_location="cpu"` before
    `load_state_dict`, which copies onto the model's device).
    """

    id = "torch-load-no-map-location"
    point = 2
    severity = Severity.MEDIUM
    title = "torch.load without map_location in code with a CPU fallback"
    items: ClassVar[tuple[str, ...]] = ("2.3",)

    def applies(self, ctx: ModuleContext) -> bool:
        return (
            _cpu_fallback(ctx)
            or "torch.load" in ctx.source
            or _cpu_flag(ctx.source)
            or _optional_cuda(ctx)
        )

    def finish(self, ctx: ModuleContext) -> None:
        here = _cpu_fallback(ctx) or _cpu_flag(ctx.source) or _optional_cuda(ctx)
        if here:
            publish_cpu_device(ctx)
        here = here or ("cpu" in ctx.source and bool(_CPU_BRANCH.search(ctx.source)))
        here = here or (_cpu_only(ctx.source) and is_script(ctx.tree))
        if "load(" not in ctx.source:
            return
        for call in ctx.flow.calls_named(("load",)):
            if ctx.flow.qualname_of(call) != "torch.load" or not call.args:
                continue
            if kwarg(call, "map_location") is not None or len(call.args) > 1:
                continue
            if any(isinstance(a, ast.Starred) for a in call.args) or any(
                k.arg is None for k in call.keywords
            ):
                continue  # a wrapper forwarding `*args, **kwargs`: its callers pass the device
            in_memory = _IN_MEMORY.search(ast.unparse(call.args[0])) and not _file_bytes(
                call.args[0]
            )
            cpu_side = _on_the_cpu_side(ctx, call)
            if in_memory or (not cpu_side and _device_branch(ctx, call)):
                continue
            if _file_names(call.args[0]) & _saved_on_cpu(ctx) or _reads_back(ctx, call):
                continue
            if _saved_by_an_earlier_helper_call(ctx, call) or _host_cache(ctx, call):
                continue
            if _copied_into_numpy_buffers(ctx, call):
                continue
            if _dataset_processed_file(ctx, call) or _path_names_the_device(ctx, call):
                continue
            if ctx.suppressed(self.id, call.lineno):
                continue
            if not (here or cpu_side) and _converted_on_the_host(ctx, call):
                here = True  # a converter script: it never names a device
            message, confirmed = _ON_CPU, True
            dropped = _map_location_dropped(ctx, call)
            if dropped:
                message = _DROPPED.format(parameter=dropped)
            elif not (here or cpu_side):
                if _starts_a_process_group(ctx) and not _main_process_only(ctx, call):
                    message = _EVERY_RANK
                else:  # a helper: an entry script importing it may offer the CPU (--device cpu)
                    confirmed = False
            found = ctx.finding(
                self, call, message, data={"into_state_dict": _feeds_load_state_dict(ctx, call)}
            )
            if found is None:
                continue
            if confirmed:
                ctx.findings.append(found)
                continue
            for symbol in _helper_symbols(ctx):
                pending = Pending(symbol=symbol, needs="cpu-device-in-project", finding=found)
                defer(ctx, self.id, pending)

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        return ProjectIndex.from_facts(facts).confirmed(facts, cls.id)


_ON_CPU = (
    "the checkpoint is loaded onto the devices it was saved from, though this code also runs on "
    "CPU: a GPU-trained checkpoint fails to load there"
)
_DROPPED = (
    "the function takes a `{parameter}` but this torch.load is not given it: the checkpoint "
    "is loaded onto the devices it was saved from, whatever the caller asked for"
)
_EVERY_RANK = (
    "every process of this distributed run loads the checkpoint onto the GPU it was saved from "
    "(GPU 0 when rank 0 saved it), not its own: each rank puts a copy there (GPU 0 runs out of "
    "memory first)"
)
_DEVICE_WORD = re.compile(r"cuda|gpu|device|accelerat", re.IGNORECASE)


_DEVICE_NAME = re.compile(r"(^|_)device$", re.IGNORECASE)


def _path_names_the_device(ctx: ModuleContext, load: ast.Call) -> bool:
    """The file name is built from the device (`'autoencoder_i_20_%s.pt' % device`,
    `f"model_{device}.pt"`): the run saved one checkpoint per device, so the file loaded is
    the one written for the device this run is on."""
    path = load.args[0]
    values = [path, *(ctx.flow.definitions(path) if isinstance(path, ast.Name) else [])]
    return any(
        isinstance(value, ast.JoinedStr | ast.BinOp | ast.Call)
        and any(
            isinstance(n, ast.Name | ast.Attribute) and _DEVICE_NAME.search(identifier(n))
            for n in walk_tree(value)
        )
        for value in values
    )


def _converted_on_the_host(ctx: ModuleContext, load: ast.Call) -> bool:
    """A script that never names a device loads a checkpoint into a name and writes what it
    made of it back with `torch.save` in the same scope (a checkpoint converter: `model =
    torch.load(old_path); model["model"] = update(model["model"]); torch.save(model,
    new_path)`). Nothing it does needs a GPU, yet a checkpoint saved from one only loads
    where CUDA is available."""
    if not is_script(ctx.tree) or _names_a_device(ctx):
        return False
    assign = ctx.parents.get(load)
    if not (
        isinstance(assign, ast.Assign)
        and len(assign.targets) == 1
        and isinstance(assign.targets[0], ast.Name)
    ):
        return False
    name, scope = assign.targets[0].id, ctx.enclosing_function(load)
    return any(
        ctx.flow.qualname_of(save) == "torch.save"
        and save.args
        and ctx.enclosing_function(save) is scope
        and (save.lineno, save.col_offset) > (load.lineno, load.col_offset)
        and any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(save.args[0]))
        for save in ctx.flow.calls_named(("save",))
    )


def _names_a_device(ctx: ModuleContext) -> bool:
    """Whether the code (its names, attributes and strings, not its docstrings or comments)
    names CUDA, a GPU, a device or an accelerator; once per module."""
    memo = ctx.memo_table("torch_load_no_map_location.names_a_device")
    if "" not in memo:
        if not _DEVICE_WORD.search(ctx.source):
            memo[""] = False
        else:
            docstrings = {
                id(node.body[0].value)
                for node in ast.walk(ctx.tree)
                if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
                and node.body
                and isinstance(node.body[0], ast.Expr)
                and isinstance(node.body[0].value, ast.Constant)
            }
            memo[""] = any(
                (isinstance(node, ast.Name) and _DEVICE_WORD.search(node.id))
                or (isinstance(node, ast.Attribute) and _DEVICE_WORD.search(node.attr))
                or (isinstance(node, ast.keyword) and node.arg and _DEVICE_WORD.search(node.arg))
                or (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and id(node) not in docstrings
                    and _DEVICE_WORD.search(node.value)
                )
                for node in ast.walk(ctx.tree)
            )
    return bool(memo[""])


def _map_location_dropped(ctx: ModuleContext, load: ast.Call) -> str | None:
    """The parameter of the load's own function that names a device this call, given none,
    never receives: a `map_location` (a checkpoint helper, `def pt_load(file_path,
    map_location=None)`), a `device` that nothing in the function reads (mamba-minimal's
    `load_state_dict_hf(model_name, device=None, dtype=None)`), or a `device` the function
    builds the model on while the state it loads into that model is restored where it was
    saved (project-azua's `TorchModel.load(..., device)`: `model = cls._create(...,
    get_torch_device(device))`, then `model.load_state_dict(torch.load(model_path))`). Every
    caller's choice of device is dropped. A helper that casts what it loaded to its device
    itself (`{k: v.to(device) ...}`) is not this: that is left to the file's reasons."""
    function = ctx.enclosing_function(load)
    if function is None:
        return None
    args = function.args
    names = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
    if "map_location" in names:
        return "map_location"
    if "device" not in names:
        return None
    read = any(
        isinstance(node, ast.Name) and node.id == "device" and isinstance(node.ctx, ast.Load)
        for node in walk_tree(function)
    )
    return None if read and not _feeds_load_state_dict(ctx, load) else "device"


def _helper_symbols(ctx: ModuleContext) -> list[str]:
    """This module, and the project modules it takes a device from: a helper that reads
    `config.DEVICE` from a `config.py` offering the CPU (`DEVICE = "cuda" if
    torch.cuda.is_available() else "cpu"`, the GAN tutorials' layout) runs there too."""
    found = [module_name(ctx.path)]
    called = {id(node.func) for node in ctx.flow.nodes(ast.Call)}
    device_reads = {
        node.value.id
        for node in ctx.flow.nodes(ast.Attribute)
        if isinstance(node.value, ast.Name)
        and "device" in node.attr.lower()
        and id(node) not in called  # a setting (`config.DEVICE`), not `idist.device()`
    }
    for name in project_imports(ctx):
        if name not in device_reads and "device" not in name.lower():
            continue  # a module this one takes no device from
        symbol = imported_symbol(ctx, name) or ""
        for candidate in (symbol, symbol.rpartition(".")[0]):
            if candidate and candidate not in found:
                found.append(candidate)
    return found


def _file_bytes(source: ast.expr) -> bool:
    """A buffer filled with a stored file's bytes (`io.BytesIO(f.read())`, a zip member's
    `z.read(name)`, `path.read_bytes()`): a checkpoint from storage, not a round trip of
    state saved in memory (TabNet's fallback for unseekable zip members)."""
    if not isinstance(source, ast.Call) or not source.args:
        return False
    return any(
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("read", "read_bytes")
        for node in walk_tree(source.args[0])
    )


def _file_names(path: ast.expr) -> set[str]:
    """The file names a path expression spells out (`os.path.join(d, "trainfeat.pth")`)."""
    return {
        node.value.rsplit("/", 1)[-1]
        for node in ast.walk(path)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value
    }


def _saved_on_cpu(ctx: ModuleContext) -> set[str]:
    """File names this module writes with `torch.save(x.cpu(), ...)` (DINO's eval_knn.py
    dumps its features that way, then reloads them under another path argument): what is
    read back from them holds CPU tensors, whatever device loads it. Memoised per module."""
    memo = ctx.memo_table("torch_load_no_map_location.saved_on_cpu")
    if "" not in memo:
        names: set[str] = set()
        for save in ctx.flow.calls_named(("save",)):
            if ctx.flow.qualname_of(save) != "torch.save" or len(save.args) < 2:
                continue
            value = save.args[0]
            if (
                isinstance(value, ast.Call)
                and isinstance(value.func, ast.Attribute)
                and value.func.attr == "cpu"
            ):
                names |= _file_names(save.args[1])
        memo[""] = names
    return memo[""]  # type: ignore[no-any-return]


def _dataset_processed_file(ctx: ModuleContext, load: ast.Call) -> bool:
    """`self.data, self.slices = torch.load(self.processed_paths[0])` in a dataset class
    (a `*Dataset` base: PyG's InMemoryDataset and friends): the file holds the data its
    `process()` collated on the host, CPU tensors whatever device loads them. A dataset
    loading anything else (a feature extractor's checkpoint) is not this."""
    path = load.args[0]
    if not (
        isinstance(path, ast.Subscript)
        and isinstance(path.value, ast.Attribute)
        and path.value.attr == "processed_paths"
    ):
        return False
    owner = next((a for a in ctx.ancestors(load) if isinstance(a, ast.ClassDef)), None)
    return owner is not None and any(
        (b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "")).endswith("Dataset")
        for b in owner.bases
    )


def _reads_back(ctx: ModuleContext, load: ast.Call) -> bool:
    """The load reads the path a `torch.save` earlier in the same function wrote (ignite's
    LR-scheduler simulation saves the optimizer state into a temporary folder, runs, then
    restores it): the same process wrote it a moment ago, on the devices it runs on."""
    scope = ctx.enclosing_function(load)
    path = ast.unparse(load.args[0])
    for save in ctx.flow.calls_named(("save",)):
        if len(save.args) < 2 or ctx.flow.qualname_of(save) != "torch.save":
            continue
        before = (save.lineno, save.col_offset) < (load.lineno, load.col_offset)
        if before and ast.unparse(save.args[1]) == path and ctx.enclosing_function(save) is scope:
            return True
    return False


def _saved_by_an_earlier_helper_call(ctx: ModuleContext, load: ast.Call) -> bool:
    """The load reads back what a local helper saved when the load's own scope called it
    earlier: `save_checkpoint(stage)` in the training loop writes
    `torch.save(state, get_checkpoint_path(suffix))`, and after the loop the script loads
    `get_checkpoint_path(stage)` (the helper's parameters replaced by the call's arguments).
    This run wrote the file, on the devices it runs on. A resume (a load before the first
    call of the helper) is not this."""
    savers: dict[str, list[tuple[FunctionNode, ast.expr]]] = {}
    scope = ctx.enclosing_function(load)
    for save in ctx.flow.calls_named(("save",)):
        if len(save.args) < 2 or ctx.flow.qualname_of(save) != "torch.save":
            continue
        helper = ctx.enclosing_function(save)
        if helper is not None and helper is not scope:
            savers.setdefault(helper.name, []).append((helper, _opened_path(ctx, save.args[1])))
    if not savers:
        return False
    path = ast.unparse(_opened_path(ctx, load.args[0]))
    for call in ctx.flow.calls_named(savers):
        if not isinstance(call.func, ast.Name) or ctx.enclosing_function(call) is not scope:
            continue  # a method of another object, or a call from another function
        if (call.lineno, call.col_offset) >= (load.lineno, load.col_offset):
            continue
        for helper, target in savers[call.func.id]:
            if _with_arguments(helper, call, target) == path:
                return True
    return False


_DEVICE_WORDS = re.compile(r"cuda|device|\.to\(")


def _host_cache(ctx: ModuleContext, load: ast.Call) -> bool:
    """`if os.path.exists(fn): x = torch.load(fn) else: x = build(...); torch.save(x, fn)`:
    the file is a cache this code fills, and the branch that fills it names no device
    (tokenized text, a vocabulary and its LongTensors): what it holds was made on the host,
    so there is nothing to map. A branch that moves to or names a device may cache GPU
    tensors and is not this."""
    path = ast.unparse(load.args[0])
    for anc in ctx.ancestors(load):
        if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            return False
        if not isinstance(anc, ast.If) or not anc.orelse:
            continue
        if path not in {ast.unparse(n) for n in ast.walk(anc.test) if isinstance(n, ast.expr)}:
            continue
        if not any(load is n for stmt in anc.body for n in walk_tree(stmt)):
            continue  # the load is in the else branch
        filling = "\n".join(ast.unparse(stmt) for stmt in anc.orelse)
        if _DEVICE_WORDS.search(filling):
            return False
        return any(
            isinstance(n, ast.Call)
            and ctx.flow.qualname_of(n) == "torch.save"
            and len(n.args) > 1
            and ast.unparse(n.args[1]) == path
            for stmt in anc.orelse
            for n in walk_tree(stmt)
        )
    return False


def _copied_into_numpy_buffers(ctx: ModuleContext, load: ast.Call) -> bool:
    """`payload = torch.load(path)` whose every read is an element copied into a slice of a
    NumPy array of the object (`self.obses[start:end] = payload[0]`, `self.obses` built by
    `np.empty(...)` in the class): a replay buffer's chunk, host arrays the buffer saved
    itself; a CUDA tensor could not be stored there anyway, so there is nothing to map."""
    assign = ctx.parents.get(load)
    function = ctx.enclosing_function(load)
    if not (
        isinstance(assign, ast.Assign)
        and len(assign.targets) == 1
        and isinstance(assign.targets[0], ast.Name)
        and function is not None
        and isinstance(owner := ctx.parents.get(function), ast.ClassDef)
    ):
        return False
    arrays = {
        target.attr
        for node in walk_tree(owner)
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Call)
        and (ctx.flow.qualname_of(node.value) or "").startswith("numpy.")
        for target in node.targets
        if isinstance(target, ast.Attribute)
        and isinstance(target.value, ast.Name)
        and target.value.id == "self"
    }
    name = assign.targets[0].id
    reads = [
        n
        for n in walk_tree(function)
        if isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Load)
    ]
    if not reads or not arrays:
        return False
    for read in reads:
        element = ctx.parents.get(read)
        store = ctx.parents.get(element) if isinstance(element, ast.Subscript) else None
        if not (
            isinstance(store, ast.Assign)
            and store.value is element
            and all(
                isinstance(t, ast.Subscript)
                and isinstance(t.value, ast.Attribute)
                and isinstance(t.value.value, ast.Name)
                and t.value.value.id == "self"
                and t.value.attr in arrays
                for t in store.targets
            )
        ):
            return False
    return True


def _opened_path(ctx: ModuleContext, target: ast.expr) -> ast.expr:
    """The path a file handle was opened from (`with open(path, "rb") as f:
    torch.load(f)`: `path`), else the expression itself: two handles both named `f` are
    the same file only when they open the same path."""
    if not isinstance(target, ast.Name):
        return target
    for anc in ctx.ancestors(target):
        if isinstance(anc, ast.With | ast.AsyncWith):
            for item in anc.items:
                opened = item.context_expr
                if (
                    isinstance(item.optional_vars, ast.Name)
                    and item.optional_vars.id == target.id
                    and isinstance(opened, ast.Call)
                    and isinstance(opened.func, ast.Name)
                    and opened.func.id == "open"
                    and opened.args
                ):
                    return opened.args[0]
        if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef):
            break
    return target


def _with_arguments(helper: FunctionNode, call: ast.Call, expr: ast.expr) -> str | None:
    """`expr` (in `helper`'s body) as the caller would spell it: the helper's parameters
    replaced by the call's arguments; None when a parameter it reads was given none."""
    params = [a.arg for a in helper.args.posonlyargs + helper.args.args]
    given: dict[str, ast.expr] = {}
    if any(isinstance(a, ast.Starred) for a in call.args):
        return None
    given.update(zip(params, call.args, strict=False))
    given.update((k.arg, k.value) for k in call.keywords if k.arg is not None)
    all_params = set(params) | {a.arg for a in helper.args.kwonlyargs}

    class _Substitute(ast.NodeTransformer):
        missing = False

        def visit_Name(self, node: ast.Name) -> ast.expr:
            if node.id in given:
                return given[node.id]
            if node.id in all_params:
                self.missing = True
            return node

    substitute = _Substitute()
    text = ast.unparse(substitute.visit(copy.deepcopy(expr)))
    return None if substitute.missing else text


def _cpu_only(source: str) -> bool:
    """A script that hands `device="cpu"` to its own calls and never names CUDA (a policy
    replayed on the CPU, an export script): what it loads must come off the GPU it was
    trained on."""
    if "cuda" in source or "device" not in source or "cpu" not in source:
        return False  # the words `_CPU_KEYWORD` needs: most texts lack one
    # tried only where `device` starts (`match` still sees the character before it)
    start = source.find("device")
    while start >= 0:
        if _CPU_KEYWORD.match(source, start):
            return True
        start = source.find("device", start + 1)
    return False


def _cpu_flag(source: str) -> bool:
    """`_CPU_OPTION` searched only in a text that declares command-line options."""
    return "add_argument" in source and bool(_CPU_OPTION.search(source))


def _optional_cuda(ctx: ModuleContext) -> bool:
    """The code moves to CUDA only under a switch (`if use_cuda: model = model.cuda()`,
    `if self.cuda:`, `if torch.cuda.is_available(): device = "cuda:0"`) and stays put
    otherwise: the other side of the switch is a CPU run. A test that picks among GPUs
    (`if args.gpu is not None`, `if n_gpu > 1`) or a branch whose `else` also moves to CUDA
    offers no CPU."""
    if "cuda" not in ctx.source:
        return False
    memo = ctx.memo_table("torch_load_no_map_location.optional_cuda")
    if "verdict" not in memo:
        memo["verdict"] = any(
            isinstance(branch, ast.If)
            and _cuda_switch(branch.test)
            and _moves_to_cuda(branch.body)
            and not _moves_to_cuda(branch.orelse)
            for branch in ctx.nodes_by_type().get(ast.If, ())
        )
    return bool(memo["verdict"])


def _cuda_switch(test: ast.expr) -> bool:
    """`use_cuda`, `args.gpu`, `self.cuda`, `torch.cuda.is_available()`, and `and`/`not`
    combinations of them: a yes/no choice of the GPU, not a comparison among GPUs."""
    if isinstance(test, ast.BoolOp):
        return any(_cuda_switch(value) for value in test.values)
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return _cuda_switch(test.operand)
    if isinstance(test, ast.Call):
        return isinstance(test.func, ast.Attribute) and test.func.attr == "is_available"
    name = test.attr if isinstance(test, ast.Attribute) else getattr(test, "id", "")
    return bool(_SWITCH_NAME.search(name))


_SWITCH_NAME = re.compile(r"cuda|gpu", re.IGNORECASE)


def _moves_to_cuda(body: list[ast.stmt]) -> bool:
    """A `x.cuda(...)` call or a `"cuda"` device string in the statements."""
    for stmt in body:
        for node in walk_tree(stmt):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "cuda"
                and ast.unparse(node.func.value) != "torch"
            ):
                return True
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value.startswith("cuda")
            ):
                return True
    return False


# A flag that says the GPU is used (`if gpu:`, `if args.use_cuda:`,
# `if torch.cuda.is_available():`); a GPU index or count (`args.gpu is None`, `n_gpu > 1`)
# or a multi-GPU switch says nothing about the CPU.
_GPU_FLAGS = frozenset(
    {"gpu", "cuda", "use_gpu", "use_cuda", "with_cuda", "is_cuda", "on_gpu", "has_cuda"}
)


def _gpu_flag(test: ast.expr) -> bool:
    if isinstance(test, ast.Call):
        return ast.unparse(test).endswith("cuda.is_available()")
    name = test.id if isinstance(test, ast.Name) else getattr(test, "attr", "")
    return isinstance(test, ast.Name | ast.Attribute) and name.lower() in _GPU_FLAGS


def _cpu_test(test: ast.expr) -> bool | None:
    """True when the branch's body is the CPU path (`if not gpu:`, `if device == "cpu":`),
    False when its `else` is (`if use_cuda:`), None when the test says neither."""
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and _gpu_flag(test.operand):
        return True
    if _gpu_flag(test):
        return False
    if (
        isinstance(test, ast.Compare)
        and len(test.ops) == 1
        and isinstance(test.ops[0], ast.Eq | ast.NotEq)
        and any(
            isinstance(side, ast.Constant) and side.value == "cpu"
            for side in (test.left, *test.comparators)
        )
    ):
        return isinstance(test.ops[0], ast.Eq)
    return None


def _on_the_cpu_side(ctx: ModuleContext, node: ast.AST) -> bool:
    """The load sits on the CPU path of a branch on a GPU flag: the body of `if not gpu:`,
    the `else` of `if use_cuda:`. That branch is where a GPU checkpoint must be mapped, so
    it is no reason to stay silent (LatticeLSTM's `if not gpu:` passed `map_location` to
    `load_state_dict` instead of `torch.load`)."""
    child: ast.AST = node
    for anc in ctx.ancestors(node):
        if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef):
            return False
        if isinstance(anc, ast.If):
            side = _cpu_test(anc.test)
            if side is not None:
                return (child in anc.body) == side
        child = anc
    return False


_MAIN_PROCESS_TEST = re.compile(r"rank|main_process|is_main|is_master|master_process")


def _starts_a_process_group(ctx: ModuleContext) -> bool:
    """The module starts a `torch.distributed` process group itself (a DDP training script:
    one process per GPU, each pinned to its own local rank); once per module."""
    memo = ctx.memo_table("torch_load_no_map_location.process_group")
    if "" not in memo:
        memo[""] = "init_process_group" in ctx.source and any(
            (ctx.flow.qualname_of(call) or "").endswith("distributed.init_process_group")
            for call in ctx.flow.calls_named(("init_process_group",))
        )
    return bool(memo[""])


def _main_process_only(ctx: ModuleContext, node: ast.AST) -> bool:
    """Under a branch that only the main process takes (`if rank == 0:`,
    `if is_main_process():`): one process loads, on the GPU rank 0 runs on."""
    return any(
        isinstance(anc, ast.If) and _MAIN_PROCESS_TEST.search(ast.unparse(anc.test))
        for anc in ctx.ancestors(node)
    )


def _device_branch(ctx: ModuleContext, node: ast.AST) -> bool:
    for anc in ctx.ancestors(node):
        if isinstance(anc, ast.If) and _DEVICE_TEST.search(ast.unparse(anc.test)):
            return True
        if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef):
            return False
    return False


def _feeds_load_state_dict(ctx: ModuleContext, call: ast.Call) -> bool:
    """The loaded object only reaches `load_state_dict(...)` (directly, by name, or by key,
    also an entry taken at the load: `checkpoint = torch.load(path)["state_dict"]`): loading
    it on CPU first changes nothing, the copy lands on the model's device."""
    if _in_load_state_dict(ctx, call):
        return True
    loaded: ast.expr = call
    while isinstance(entry := ctx.parents.get(loaded), ast.Subscript) and entry.value is loaded:
        loaded = entry
    parent = ctx.parents.get(loaded)
    if not isinstance(parent, ast.Assign) or len(parent.targets) != 1:
        return False
    target = parent.targets[0]
    if not isinstance(target, ast.Name):
        return False
    scope = ctx.enclosing_function(call)
    reads = [r for r in ctx.flow.reads_of(target.id) if ctx.enclosing_function(r) is scope]
    whole = [r for r in reads if not isinstance(ctx.parents.get(r), ast.Subscript)]
    return (
        bool(reads)
        and all(_in_load_state_dict(ctx, r) for r in whole)
        and any(_in_load_state_dict(ctx, r) for r in reads)
    )


def _in_load_state_dict(ctx: ModuleContext, node: ast.AST) -> bool:
    for anc in ctx.ancestors(node):
        if isinstance(anc, ast.Call):
            func = anc.func
            return isinstance(func, ast.Attribute) and func.attr == "load_state_dict"
        if isinstance(anc, ast.stmt):
            return False
    return False
