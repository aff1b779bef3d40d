"""batch-input-not-moved: a model given some batch tensors moved to the device, one not."""

from __future__ import annotations

import ast
import re
from typing import TYPE_CHECKING, ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.device_scope import touches_accelerator
from torchdoctor.agent.checks.loops import nodes_of, walk_scope
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import is_model_expr, terminal_name
from torchdoctor.agent.checks.rules.layer_added_after_move import (
    is_device_move,
    moved_expression,
)
from torchdoctor.agent.models import Severity

if TYPE_CHECKING:
    from torchdoctor.agent.checks.dataflow import DataFlow

_MOVES = frozenset({"to", "cuda", "to_device", "move_to_device", "type_as"})
# tensor-making calls: what a name bound through one of them holds is a tensor
_TENSOR_METHODS = frozenset(
    {"squeeze", "unsqueeze", "long", "float", "half", "int", "bool", "view", "reshape",
     "permute", "contiguous", "clone", "transpose", "flatten", "stack", "cat"}
)  # fmt: skip
_LOADER_WORDS = ("loader", "batch", "dl", "data", "iterator")
# Constructors that always make a CPU tensor unless given `device=`.
_HOST_FACTORIES = frozenset(
    {"tensor", "as_tensor", "from_numpy", "LongTensor", "FloatTensor", "Tensor", "IntTensor",
     "BoolTensor"}
)  # fmt: skip
# Ways a moved model is run on an input.
_RUNS = frozenset({"generate", "forward", "sample", "predict", "encode", "decode"})
_NESTED_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
# Wrappers that move (scatter) their CPU inputs to the devices themselves.
_SCATTERING = frozenset({"DataParallel", "BalancedDataParallel"})
_LENGTHS = re.compile(r"len", re.IGNORECASE)
_DEPTH = 4


class BatchInputNotMoved(Rule):
    """Detects a model call inside a loop over batches where some arguments were moved to
    the device (`images = batch[0].to(device_id)`, `labels = labels.to(device)`) and another
    is a tensor built from the batch that never was (`input_ids =
    torch.stack([x[0] for x in batch[1]]).squeeze(1)` passed as `lang_x=input_ids`).

    Why it matters: the model's weights and the moved inputs are on the accelerator and the
    forgotten one is on the CPU: the first forward fails with "Expected all tensors to be on
    the same device" (or, for an index tensor, an embedding lookup on the wrong device). When
    one data path is added beside another (a second dataset in the same step, a new field of
    the batch) its tensors are where the move is forgotten. mlfoundations/open_flamingo fixed
    exactly this (`a05dcba`: the MMC4 pass moved images and labels but gave the model
    `input_ids` and `attention_mask` from the CPU batch).

    Not reported: arguments moved anywhere in the function (`x = x.to(device)`), derived from
    a moved name, or given `device=`; values not made with a tensor operation (strings,
    lists a model tokenises itself); calls where nothing is moved; modules that never name a
    device.

    Also reported, outside batch loops: an input made on the host in the same function or
    script (`torch.tensor(ids).unsqueeze(0)`, `tokenizer(text, return_tensors="pt")`, or a
    function of the same file that returns one, `text_to_token_ids(prompt, tokenizer)`)
    given to a model that this scope moved to a device earlier (`model.to(device)`), or to a
    function of the same file together with that model, without ever being moved: the
    generation script that moves the GPT and not the prompt (rasbt/LLMs-from-scratch
    `f61c008`). Not reported: inputs moved anywhere in the scope (rebinding the name, a dict
    comprehension of moved values), given `device=`, scalars (`torch.tensor(0.5)`), models
    moved to the CPU or to a dtype, models wrapped in `nn.DataParallel` (it scatters CPU
    inputs itself), sequence lengths (`input_lengths`: `pack_padded_sequence` wants them on
    the host), and functions of the same file that move one of their arguments (they place
    the input themselves) or are imported (unknown).

    Example:
        for batch in loader:
            images = batch[0].to(device, non_blocking=True)
            input_ids = torch.stack([x[0] for x in batch[1]]).squeeze(1)
            loss = model(vision_x=images, lang_x=input_ids)[0]

    Fix: move it with the others: `lang_x=input_ids.to(device)`.
    """

    id = "batch-input-not-moved"
    point = 1
    severity = Severity.HIGH
    title = "Batch tensor passed to the model without moving it to the device"
    items: ClassVar[tuple[str, ...]] = ("1.3",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    triggers = Triggers((".to(", ".cuda("))

    def finish(self, ctx: ModuleContext) -> None:
        if not touches_accelerator(ctx.source):
            return
        functions = {
            f.name: f
            for f in nodes_of(ctx, ast.FunctionDef, ast.AsyncFunctionDef)
            if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        helpers: list[set[str]] = []
        scopes: list[list[ast.stmt]] = [ctx.tree.body]
        scopes.extend(f.body for f in functions.values())
        for body in scopes:
            own = [s for s in body if not isinstance(s, _NESTED_SCOPES)]
            self._host_input_to_moved_model(ctx, own, helpers, functions)

    def _host_input_to_moved_model(
        self,
        ctx: ModuleContext,
        body: list[ast.stmt],
        helpers: list[set[str]],
        functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef],
    ) -> None:
        """`helpers`: the module's functions that make host tensors and those that move an
        argument, found once a scope first moves a model (empty until then: most modules
        never do, and judging every function costs more than the rest of the rule)."""
        models: dict[str, int] = {}  # model name -> first line where it is moved
        bindings: dict[str, list[tuple[int, ast.expr | None]]] = {}
        touched: dict[str, list[int]] = {}  # names moved (or rebound from a move) -> lines
        calls: list[ast.Call] = []
        for node in walk_scope(body):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        bindings.setdefault(target.id, []).append((node.lineno, node.value))
                        moved = (
                            moved_expression(node.value) if isinstance(node.value, ast.Call) else ""
                        )
                        if (moved or _chain_moves(node.value)) and is_model_expr(ctx, target):
                            models.setdefault(target.id, node.lineno)
                    else:
                        for bound in ast.walk(target):
                            if isinstance(bound, ast.Name):
                                bindings.setdefault(bound.id, []).append((node.lineno, None))
            elif isinstance(node, ast.Call):
                moved = moved_expression(node)
                if moved.isidentifier():
                    touched.setdefault(moved, []).append(node.lineno)
                    assert isinstance(node.func, ast.Attribute)
                    if is_model_expr(ctx, node.func.value):
                        models.setdefault(moved, node.lineno)
                calls.append(node)
        for model in list(models):
            if any(
                isinstance(value, ast.Call) and terminal_name(value.func) in _SCATTERING
                for _, value in bindings.get(model, [])
            ):
                del models[model]  # nn.DataParallel(model.cuda()) scatters CPU inputs itself
        if not models:
            return
        if not helpers:
            helpers += [
                {name for name, f in functions.items() if _returns_host_tensor(f)},
                {name for name, f in functions.items() if _moves_an_argument(f)},
            ]
        host_makers, movers = helpers
        for call in calls:
            model = _run_model(call, models, movers, functions)
            if not model:
                continue
            for argument in [*call.args, *(k.value for k in call.keywords)]:
                name = argument.id if isinstance(argument, ast.Name) else ""
                keyword = next((k.arg for k in call.keywords if k.value is argument), None)
                if _LENGTHS.search(name or "") or _LENGTHS.search(keyword or ""):
                    continue  # sequence lengths stay on the host (pack_padded_sequence)
                value: ast.expr | None = argument
                if name:
                    if name == model or touched.get(name):
                        continue
                    earlier = [b for b in bindings.get(name, []) if b[0] < call.lineno]
                    value = max(earlier, key=lambda b: b[0])[1] if earlier else None
                if value is None or not _host_tensor(value, host_makers):
                    continue
                shown = name or ast.unparse(argument)
                ctx.report(
                    self,
                    argument,
                    f"`{shown}` is made on the CPU and given to `{ast.unparse(call.func)}` "
                    f"without being moved, while `{model}` was moved to the device (line "
                    f"{models[model]}): the forward mixes devices and fails. Move it too: "
                    "`.to(device)`.",
                )

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        arguments = [*node.args, *(k.value for k in node.keywords)]
        names = [a for a in arguments if isinstance(a, ast.Name)]
        if len(names) < 2 or len(arguments) < 2:
            return
        function = ctx.enclosing_function(node)
        loop = _enclosing_loop(ctx, node, function)
        if loop is None or not touches_accelerator(ctx.source):
            return
        if not is_model_expr(ctx, node.func):
            return
        flow = ctx.flow
        batch_names = {t.id for t in ast.walk(loop.target) if isinstance(t, ast.Name)}
        moved = [n for n in names if _moved(flow, n, _DEPTH)]
        if not moved:
            return
        for name in names:
            if name in moved or not _from_batch(flow, name, batch_names, _DEPTH):
                continue
            value = flow.reaching(name)
            if value is None or not _tensor_made(value):
                continue
            ctx.report(
                self,
                name,
                f"`{name.id}` is built from the batch and given to "
                f"`{ast.unparse(node.func)}` without being moved, while "
                f"`{moved[0].id}` beside it was moved to the device: the forward mixes "
                f"devices and fails. Move it too: `{name.id}.to(device)`.",
            )


def _enclosing_loop(ctx: ModuleContext, node: ast.AST, function: ast.AST | None) -> ast.For | None:
    """The innermost `for` over batches (its iterable names a loader or batch) around `node`,
    inside its function."""
    memo = ctx.memo_table("batch-input-not-moved.loops")
    for ancestor in ctx.ancestors(node):
        if ancestor is function:
            return None
        if isinstance(ancestor, ast.For):
            over_batches = memo.get(id(ancestor))
            if over_batches is None:
                text = ast.unparse(ancestor.iter).lower()
                over_batches = memo[id(ancestor)] = any(w in text for w in _LOADER_WORDS)
            if over_batches:
                return ancestor
    return None


def _moved(flow: DataFlow, name: ast.Name, depth: int) -> bool:
    """The binding of `name` reaching this read moves it (`.to(...)`, `.cuda()`, `device=`),
    or reads a name whose reaching binding is moved."""
    value = flow.reaching(name)
    if depth < 0 or value is None:
        return False
    for inner in ast.walk(value):
        if isinstance(inner, ast.Call) and (
            terminal_name(inner.func) in _MOVES or any(k.arg == "device" for k in inner.keywords)
        ):
            return True
        if isinstance(inner, ast.Name) and _moved(flow, inner, depth - 1):
            return True
    return False


def _from_batch(flow: DataFlow, name: ast.Name, batch: set[str], depth: int) -> bool:
    """The binding of `name` reaching this read reads the loop's batch, directly or through
    other names."""
    value = flow.reaching(name)
    if depth < 0 or value is None:
        return False
    return any(
        isinstance(inner, ast.Name)
        and (inner.id in batch or _from_batch(flow, inner, batch, depth - 1))
        for inner in ast.walk(value)
    )


def _tensor_made(value: ast.expr) -> bool:
    return any(
        isinstance(inner, ast.Call)
        and (
            terminal_name(inner.func) in _TENSOR_METHODS
            or (
                isinstance(inner.func, ast.Attribute)
                and ast.unparse(inner.func).startswith("torch.")
            )
        )
        for inner in ast.walk(value)
    )


def _run_model(
    call: ast.Call,
    models: dict[str, int],
    movers: set[str],
    functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef],
) -> str:
    """The moved model `call` runs: `model(x)`, `model.generate(**inputs)`, or a function of
    this file given the model (`generate(model=gpt, idx=...)`) that moves none of its
    arguments. '' otherwise, or when the call comes before the move."""
    func = call.func
    if isinstance(func, ast.Name) and func.id in models:
        return func.id if models[func.id] < call.lineno else ""
    if (
        isinstance(func, ast.Attribute)
        and func.attr in _RUNS
        and isinstance(func.value, ast.Name)
        and func.value.id in models
    ):
        return func.value.id if models[func.value.id] < call.lineno else ""
    if isinstance(func, ast.Name) and func.id in functions and func.id not in movers:
        for argument in [*call.args, *(k.value for k in call.keywords)]:
            if (
                isinstance(argument, ast.Name)
                and argument.id in models
                and models[argument.id] < call.lineno
            ):
                return argument.id
    return ""


def _chain_moves(value: ast.expr) -> bool:
    """`Net().cuda()`, `GPT(cfg).to(device)` bound to a name: the chain ends in a move."""
    return (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Attribute)
        and isinstance(value.func.value, ast.Call)
        and is_device_move(value)
    )


def _host_tensor(value: ast.expr, host_makers: set[str]) -> bool:
    """A CPU tensor made here: `torch.tensor(ids)` (not a scalar), `torch.from_numpy(a)`,
    a tokenizer asked for PyTorch tensors, a function of this file that returns one; through
    shaping methods (`.unsqueeze(0)`, `.long()`), never through a move."""
    while (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Attribute)
        and value.func.attr in _TENSOR_METHODS
    ):
        value = value.func.value
    if not isinstance(value, ast.Call):
        return False
    if any(k.arg == "device" for k in value.keywords):
        return False
    func = value.func
    if isinstance(func, ast.Name) and func.id in host_makers:
        return True
    if (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and func.value.id == "torch"
        and func.attr in _HOST_FACTORIES
    ):
        return bool(value.args) and not isinstance(value.args[0], ast.Constant | ast.UnaryOp)
    return (
        any(
            k.arg == "return_tensors"
            and isinstance(k.value, ast.Constant)
            and k.value.value == "pt"
            for k in value.keywords
        )
        and "token" in ast.unparse(func).lower()
    )


def _returns_host_tensor(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """A function whose every return gives a CPU tensor it made (`return
    torch.tensor(encoded).unsqueeze(0)`, or a name it bound to one)."""
    own = [s for s in function.body if not isinstance(s, _NESTED_SCOPES)]
    bound: dict[str, ast.expr] = {}
    returns: list[ast.expr | None] = []
    for node in walk_scope(own):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                bound[target.id] = node.value
        elif isinstance(node, ast.Return):
            returns.append(node.value)
    if not returns:
        return False
    for value in returns:
        if isinstance(value, ast.Name):
            value = bound.get(value.id)
        if value is None or not _host_tensor(value, set()):
            return False
    return True


def _moves_an_argument(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """`def generate(model, idx): idx = idx.to(model.device)`: it places what it is given."""
    params = {a.arg for a in (*function.args.posonlyargs, *function.args.args)}
    params |= {a.arg for a in function.args.kwonlyargs}
    own = [s for s in function.body if not isinstance(s, _NESTED_SCOPES)]
    for node in walk_scope(own):
        if isinstance(node, ast.Call) and moved_expression(node).split(".")[0] in params:
            return True
        if isinstance(node, ast.Call) and any(k.arg == "device" for k in node.keywords):
            return True
    return False
