"""device-mismatch-factory-in-forward: `forward` creates CPU tensors with no `device=`."""

from __future__ import annotations

import ast
import re
from typing import Any, ClassVar

from torchdoctor.agent.checks.analysis.project import (
    Pending,
    ProjectIndex,
    callee_symbol,
    defer,
    publish,
)
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.checks.dataflow import kwarg
from torchdoctor.agent.checks.device_scope import is_script, touches_accelerator
from torchdoctor.agent.checks.loops import enclosing_ifs, nodes_of, walk_scope, walk_tree
from torchdoctor.agent.checks.patterns import terminal_name
from torchdoctor.agent.models import Severity

_FACTORIES = frozenset(
    f"torch.{name}"
    for name in (
        "zeros",
        "ones",
        "empty",
        "full",
        "rand",
        "randn",
        "randint",
        "arange",
        "eye",
        "linspace",
        "tensor",
        # the legacy constructors: `torch.Tensor([p])` is a 1-element CPU tensor, not a scalar
        "Tensor",
        "FloatTensor",
        "DoubleTensor",
        "HalfTensor",
        "LongTensor",
        "IntTensor",
        "ByteTensor",
        "BoolTensor",
        # a NumPy draw or table turned into a tensor: always on the CPU, there is no device=
        "from_numpy",
    )
)
_MOVES = frozenset({"to", "cuda", "type_as", "to_device"})
_TO_HOST = frozenset({"tolist", "item", "numpy"})
_HOST_BUILTINS = frozenset({"int", "len", "list", "float", "range"})
# Tensor methods whose other arguments are sizes, dims or flags, never a second tensor, and the
# fields of the named tuples some of them return (`x.topk(k, dim=-1).indices`).
_SHAPING_METHODS = frozenset(
    {"topk", "sort", "argsort", "argmax", "argmin", "view", "reshape", "unsqueeze", "squeeze",
     "flatten", "expand", "repeat", "permute", "transpose", "narrow", "long", "int"}
)  # fmt: skip
_RESULT_FIELDS = frozenset({"indices", "values"})
_MOVER_NAME = re.compile(r"(to_(var|cuda|device|gpu)|move_to(_device|_cuda|_gpu)?)")


class DeviceMismatchFactoryInForward(Rule):
    """Detects tensor factories (`torch.zeros/ones/empty/full/rand/randn/randint/arange/eye/
    linspace/tensor`, and `torch.from_numpy`, always a CPU tensor) called inside an
    `nn.Module.forward` (or the `__call__` of a plain class called on each batch, a loss
    object, and the methods of its own it runs) without `device=` and without an
    `.to(...)`/`.cuda()`/`.type_as(...)` in the same chain (`torch.arange(n).view(-1, 1)
    .to(device)`). Not reported: scalar `torch.tensor(0.5)`, `torch.tensor(2.0 /
    torch.pi)` and `torch.tensor(y_th)` of a parameter defaulting to a number (`y_th=10.`)
    (0-dim CPU tensors mix with CUDA tensors in arithmetic; not in a list that
    `torch.stack`/`torch.cat` joins, which is reported), index tensors
    (`x[torch.arange(B), idx]`: a CUDA tensor may be indexed with CPU indices), tensors
    whose values only serve the host (sizes counted with `torch.unique_consecutive` and
    `torch.cumsum` and then used as loop bounds, list slices or `.tolist()`, or a stand-in
    only detached into a dict of values to log, or put straight into such a dict beside
    detached values: latent-diffusion's `torch.tensor(disc_factor)` in its loss's log), and
    scripts
    that never mention a device (a `__main__` guard or a module-level loop and no cuda,
    device or accelerator anywhere: the model runs on the CPU), and pytest modules (their
    stand-in models return fixed tensors; a mismatch there fails the test itself), and
    factories on the CPU branch of a forward that branches on `x.is_cuda`, and a factory
    bound to a name that a later statement moves (`zeros = zeros.cuda()` under
    `if x.is_cuda:`, `noise = Variable(noise.float()).type_as(mu)`), also when the factory
    is bound through `Variable(...)` or argument-free methods (LPIPS's `ret_var =
    Variable(torch.Tensor((value,)))`, then `ret_var = ret_var.cuda()` when on the GPU).

    In the other methods a forward runs, a factory is reported only when it is used where it
    is made, beside one of the method's tensors (`torch.spmm(adj, torch.ones((n, 1)))`,
    `h * torch.ones(n, 1)`): no later move can place it; or when it is bound to a name
    the method never re-binds and then compares or combines with a tensor made from one of
    its parameters (a mask helper's `row_vector = torch.arange(0, maxlen, 1)` then
    `row_vector < torch.unsqueeze(lengths, -1)`: shenweichen/DeepCTR-Torch `322e316`); or
    when it is cached, through calls that keep its device, in a plain attribute the method
    returns and never moves (`self._future_mask = torch.triu(fill_with_neg_inf(torch.zeros(
    [dim, dim])), 1)` then `return self._future_mask[:dim, :dim]`: facebookresearch/fairseq
    `810e61a`); not when the method moves the cached tensor (`self._future_mask =
    self._future_mask.to(tensor)`) or the chain does.

    Also reported, in those other methods: a factory bound through scaling and casts (`inv_freq
    = 1.0 / (10000 ** (torch.arange(0, channels, 2).float() / channels))`) then combined with
    a tensor method's result on a parameter (`t.repeat(1, channels // 2) * inv_freq`: a
    positional encoding); and a factory the helper returns (`return torch.zeros(1, X.size(0),
    hidden)`) that every call in `forward` binds without moving (`h_n = self._init_states(X)`,
    then given to the LSTM). Moved at the call or re-bound by a move, it is not reported.

    Also reported, in a module's other per-batch methods (`update(minibatches)`,
    `training_step`, `forward_*` variants) and the methods of its own they run: factories
    pinned to CUDA (`.cuda()`, `device='cuda'`) outside a CUDA check, which fail on a CPU
    run (facebookresearch/DomainBed `3184788`, "Replace .cuda() with .to(device)").

    Also reported, in any other function or method: a factory without `device=` bound to a
    name beside a sibling factory that is given `device=`, then combined by arithmetic with
    one of the function's inputs (flair's Viterbi decoder: `backpointers = torch.ones(...,
    device=flair.device)` beside `scores_upto_t = torch.zeros(batch_size, seq_len + 1,
    tagset_size)`, then `scores_upto_t[:n, t - 1].unsqueeze(-1) + features[:n, t]`,
    flairNLP/flair `0e54fa2`). Not when the name is re-bound or moved, when the sibling is
    placed on the CPU, or when it only meets other host values.

    Also reported, in any module-level function (a forward's helper such as drop-connect or
    a mask builder, often in another file than the model): a factory given the dtype of one of
    the function's parameters (`dtype=x.dtype`) but not its device, with the same exclusions.

    Why it matters: the tensor is created on the CPU whatever device the model runs on: on a
    GPU the forward fails with "Expected all tensors to be on the same device", or pays a
    host-to-device copy on every call when moved afterwards.

    Example:
        def forward(self, x):
            mask = torch.ones(x.shape[0], x.shape[1])
            return x * mask

    Fix: `torch.ones(..., device=x.device, dtype=x.dtype)`, `torch.ones_like(x)` or
    `x.new_ones(...)`; constant tensors belong in a registered buffer.
    """

    id = "device-mismatch-factory-in-forward"
    point = 1
    severity = Severity.MEDIUM
    title = "Tensor created without device= in forward()"
    items: ClassVar[tuple[str, ...]] = ("1.3",)

    def applies(self, ctx: ModuleContext) -> bool:
        return (
            ("def forward" in ctx.source and bool(ctx.flow.module_classes))
            or (
                "def __call__" in ctx.source
                and any(_called_per_batch(cls) for cls in ctx.flow.classes.values())
            )
            or (".dtype" in ctx.source and _copies_a_dtype(ctx))
            or "[0]" in ctx.source  # may read a forward's one-element argument: publish it
        )

    def finish(self, ctx: ModuleContext) -> None:
        if "[0]" in ctx.source:
            publish(ctx)  # its functions that read only an argument's elements
        forwards = "def forward" in ctx.source or "def __call__" in ctx.source
        siblings = "device=" in ctx.source
        if not forwards and ".dtype" not in ctx.source and not siblings:
            return
        if not touches_accelerator(ctx.source) and is_script(ctx.tree):
            return  # a CPU-only script: there is no other device to mismatch
        if ctx.test_module:
            return  # test doubles returning fixed tensors: a mismatch fails the test itself
        if siblings:
            self._check_siblings(ctx)
        if not forwards and ".dtype" not in ctx.source:
            return
        if ".dtype" in ctx.source:
            copying = _functions_with_dtype_copies(ctx)
            for fn in ctx.tree.body:
                if isinstance(fn, ast.FunctionDef) and id(fn) in copying:
                    self._check_dtype_copies(ctx, fn)
        if not forwards:
            return
        flow = ctx.flow
        for name in sorted(flow.module_classes):
            if _data_transform(flow.classes[name]):
                continue  # runs where the samples are, in the data pipeline
            methods = _forward_and_helpers(flow.classes[name])
            for method in methods:  # helpers often build and then move: only bare .cuda() pins
                self._check_forward(
                    ctx, method, pins_only=method is not methods[0], caller=methods[0]
                )
            for method in _step_methods(flow.classes[name]):
                if method not in methods:
                    self._check_pins(ctx, method)
        for cls in flow.classes.values():
            if cls.name not in flow.module_classes:
                for method in _called_per_batch(cls):
                    self._check_forward(ctx, method)

    def _check_siblings(self, ctx: ModuleContext) -> None:
        """Outside a module's forward and its helpers: a factory without `device=` bound to a
        name in a function whose sibling factory is given `device=`, then combined by
        arithmetic with one of the function's input tensors (flair's Viterbi decoder:
        `backpointers = torch.ones(..., device=flair.device)` beside `scores_upto_t =
        torch.zeros(batch_size, seq_len + 1, tagset_size)`, then `scores_upto_t[:n, t - 1]
        .unsqueeze(-1) + features[:n, t]`)."""
        checked = {
            id(method)
            for name in ctx.flow.module_classes
            for method in _forward_and_helpers(ctx.flow.classes[name])
        }
        for fn in nodes_of(ctx, ast.FunctionDef):
            assert isinstance(fn, ast.FunctionDef)
            if id(fn) in checked:
                continue
            own = [s for s in fn.body if not isinstance(s, _NESTED_SCOPES)]
            nodes = list(walk_scope(own))
            factories = [
                n
                for n in nodes
                if isinstance(n, ast.Call) and ctx.flow.qualname_of(n) in _FACTORIES
            ]
            if not any(_given_a_device(f) for f in factories):
                continue
            inputs = _input_names(fn, nodes)
            for factory in factories:
                if _given_a_device(factory) or _placed(ctx, factory):
                    continue
                bound = _bound_to(factory, ctx)
                if bound is None or _moved_when_bound(factory, fn, ctx):
                    continue
                name, assign = bound
                if any(_rebound_or_moved(n, name) for n in nodes if n is not assign):
                    continue
                met = _met_by_arithmetic(nodes, name, inputs)
                if met is None:
                    continue
                qual = ctx.flow.qualname_of(factory)
                ctx.report(
                    self,
                    factory,
                    f"`{qual}` in {fn.name}() makes `{name}` on the CPU while a tensor beside it "
                    f"is given device=, and `{name}` then meets `{met}` from the function's "
                    "inputs: on the GPU the arithmetic mixes devices and fails; pass the same "
                    "device= here",
                    data={"factory": qual},
                )

    def _check_dtype_copies(self, ctx: ModuleContext, fn: ast.FunctionDef) -> None:
        """A module-level function (a forward's helper: drop-connect, a mask builder) that
        builds a tensor with the dtype of a tensor it was given but not its device."""
        params = {a.arg for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]}
        for node in walk_scope(fn.body):
            if not isinstance(node, ast.Call) or ctx.flow.qualname_of(node) not in _FACTORIES:
                continue
            source = _dtype_source(node)
            if source not in params or kwarg(node, "device") is not None:
                continue
            dtype = kwarg(node, "dtype")
            if isinstance(dtype, ast.Attribute) and ctx.flow.is_module_value(dtype.value):
                continue  # a model's dtype (Hugging Face's `model.dtype`): not a tensor it got
            if _placed(ctx, node) or _host_only(ctx, node, fn):
                continue
            if _on_cpu_branch(ctx, node, fn) or _moved_when_bound(node, fn, ctx):
                continue
            qual = ctx.flow.qualname_of(node)
            ctx.report(
                self,
                node,
                f"`{qual}` in {fn.name}() copies the dtype of `{source}` but not its device: "
                f"the tensor is created on the CPU whatever device `{source}` is on; pass "
                f"device={source}.device (or use a *_like / {source}.new_* factory)",
                data={"factory": qual},
            )

    def _check_pins(self, ctx: ModuleContext, method: ast.FunctionDef) -> None:
        """A module's training-step method (`update`, `training_step`, `forward_*`) and its
        own helpers: only tensors pinned to CUDA (`.cuda()`, `device='cuda'`), which fail
        on a CPU run whatever else the method does."""
        for node in walk_scope(method.body):
            if not isinstance(node, ast.Call):
                continue
            qual = ctx.flow.qualname_of(node)
            if qual not in _FACTORIES or _cuda_guarded(ctx, node, method):
                continue
            if _pinned_to_cuda(ctx, node):
                pin = f"`{qual}(...).cuda()`"
            elif _cuda_literal_device(node):
                pin = f"`{qual}(..., device='cuda')`"
            else:
                continue
            ctx.report(
                self,
                node,
                f"{pin} in {method.name}() pins the tensor to CUDA: the module fails on a "
                "CPU run and on any other device; pass device=x.device (the batch's) instead",
                data={"factory": qual},
            )

    def _check_forward(
        self,
        ctx: ModuleContext,
        forward: ast.FunctionDef,
        pins_only: bool = False,
        caller: ast.FunctionDef | None = None,
    ) -> None:
        for node in walk_scope(forward.body):
            if not isinstance(node, ast.Call):
                continue
            qual = ctx.flow.qualname_of(node)
            if qual not in _FACTORIES:
                continue
            if _pinned_to_cuda(ctx, node) and not _cuda_guarded(ctx, node, forward):
                ctx.report(
                    self,
                    node,
                    f"`{qual}(...).cuda()` in {forward.name}() pins the tensor to the current "
                    "CUDA device: the model fails on a CPU run and on any other device; pass "
                    "device=x.device instead",
                    data={"factory": qual},
                )
                continue
            if (
                pins_only
                and not _consumed_beside_a_tensor(ctx, node, forward)
                and not _bound_then_met(ctx, node, forward)
                and not (caller is not None and _returned_unmoved(ctx, node, forward, caller))
                and not _cached_on_self_and_returned(ctx, node, forward)
            ):
                continue
            if _placed(ctx, node) or _host_only(ctx, node, forward):
                continue
            if _logged_beside_detached(ctx, node) or _elements_read_by_local_helper(ctx, node):
                continue
            if _empty_default(ctx, node):
                continue
            if _on_cpu_branch(ctx, node, forward) or _moved_when_bound(node, forward, ctx):
                continue
            if _moved_at_each_use(node, forward, ctx):
                continue
            remedy = (
                "move it with .to(x.device) (or keep the array as a registered buffer)"
                if qual == "torch.from_numpy"
                else "pass device= (e.g. device=x.device) or use a *_like / x.new_* factory"
            )
            message = (
                f"`{qual}` in {forward.name}() creates a CPU tensor whatever the model's "
                f"device: {remedy}"
            )
            handed = _handed_to_another_file(ctx, node, forward)
            if handed is None:
                ctx.report(self, node, message, data={"factory": qual})
                continue
            found = ctx.finding(self, node, message, data={"factory": qual})
            if found is not None:  # unless that function reads only its elements
                symbol, position = handed
                pending = Pending(
                    symbol=symbol, needs="argument-used-whole", finding=found, position=position
                )
                defer(ctx, self.id, pending)

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        return ProjectIndex.from_facts(facts).confirmed(facts, cls.id)


def _consumed_beside_a_tensor(
    ctx: ModuleContext, factory: ast.Call, method: ast.FunctionDef
) -> bool:
    """The factory is an operand of a torch function beside one of the method's tensor
    parameters (`torch.spmm(Adj_block, torch.ones((Adj_block.shape[0], 1)))`, GIN's average
    pooling in a layer helper), in a list it joins with one (`torch.cat([h, torch.zeros(n,
    1)])`), or of arithmetic with one (`h * torch.ones(n, 1)`): used where it is made, so no
    later move can place it."""
    params = {a.arg for a in [*method.args.posonlyargs, *method.args.args]} - {"self"}

    def given(expr: ast.expr) -> bool:
        return isinstance(expr, ast.Name) and expr.id in params

    parent = ctx.parents.get(factory)
    if isinstance(parent, ast.List | ast.Tuple):
        if not any(given(e) for e in parent.elts):
            return False
        parent = ctx.parents.get(parent)
        return isinstance(parent, ast.Call) and (ctx.flow.qualname_of(parent) or "").startswith(
            "torch."
        )
    if isinstance(parent, ast.BinOp):
        return given(parent.right if parent.left is factory else parent.left)
    return (
        isinstance(parent, ast.Call)
        and (ctx.flow.qualname_of(parent) or "").startswith("torch.")
        and factory in parent.args
        and any(given(a) for a in parent.args)
    )


_HOST_VALUES = frozenset({"size", "dim", "item", "tolist", "numel", "shape", "len", "int", "max"})


def _bound_then_met(ctx: ModuleContext, factory: ast.Call, method: ast.FunctionDef) -> bool:
    """The factory bound to a name (`row_vector = torch.arange(0, maxlen, 1)`) that the
    method, never re-binding it, compares or combines with a tensor made from one of its
    parameters (`mask = row_vector < torch.unsqueeze(lengths, -1)` through `matrix`): a mask
    helper's CPU range meets the batch's device where it is used."""
    bound = _bound_to(factory, ctx)
    if bound is None:
        return False
    name, assign = bound
    args = method.args
    required = args.args[: max(0, len(args.args) - len(args.defaults))]
    tensors = {a.arg for a in [*args.posonlyargs, *required]} - {"self"}
    statements = list(walk_scope(method.body))
    for node in statements:  # names made from a parameter by a tensor operation
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and isinstance(node.value, ast.Call)
            and not any(
                isinstance(n, ast.Attribute | ast.Name) and terminal_name(n) in _HOST_VALUES
                for n in ast.walk(node.value)
            )
            and any(isinstance(n, ast.Name) and n.id in tensors for n in ast.walk(node.value))
        ):
            tensors.add(node.targets[0].id)
    tensors.discard(name)
    for node in statements:
        if (
            isinstance(node, ast.Assign)
            and node is not assign
            and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
        ):
            return False  # re-bound (moved, cast): no telling where it meets
        operands: list[ast.expr] = []
        if isinstance(node, ast.Compare) and len(node.ops) == 1:
            operands = [node.left, node.comparators[0]]
        elif isinstance(node, ast.BinOp):
            operands = [node.left, node.right]
        if len(operands) == 2 and any(isinstance(o, ast.Name) and o.id == name for o in operands):
            other = (
                operands[1]
                if isinstance(operands[0], ast.Name) and operands[0].id == name
                else operands[0]
            )
            if _tensor_expression(other, tensors):
                return True
    return False


def _tensor_expression(expr: ast.expr, tensors: set[str]) -> bool:
    """One of the method's tensors, or a tensor method's result on one (`t.repeat(1, n)`,
    `x.unsqueeze(-1)`, `h[:, 0]`) that reads no host value (`x.size(0)`, `x.shape`)."""
    node = expr
    while True:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in _HOST_VALUES:
                return False
            node = node.func.value
        elif isinstance(node, ast.Subscript):
            node = node.value
        elif isinstance(node, ast.Attribute):
            if node.attr in _HOST_VALUES:
                return False
            node = node.value
        else:
            break
    return isinstance(node, ast.Name) and node.id in tensors


def _returned_unmoved(
    ctx: ModuleContext, factory: ast.Call, helper: ast.FunctionDef, forward: ast.FunctionDef
) -> bool:
    """The helper returns the factory's tensor (through `Variable(...)`, `.float()`, scaling:
    DA-RNN's `_init_states` returning `torch.zeros(1, X.size(0), hidden)`) and every call of
    the helper in `forward` binds it to a name without moving it, then or later (`h_n =
    self._init_states(X)`, handed to the LSTM beside the batch): a CPU state meets the model's
    device. Moved at the call (`self.init_hidden(b).to(x.device)`) or re-bound after it, it
    is not judged."""
    node: ast.AST = factory
    parent = ctx.parents.get(factory)
    while parent is not None and (_scaled(parent, node) or _wrapped(ctx, parent, node)):
        result = ctx.parents.get(parent) if isinstance(parent, ast.Attribute) else parent
        if result is None:
            return False
        node, parent = result, ctx.parents.get(result)
    if not isinstance(parent, ast.Return) or forward is helper:
        return False
    statements = list(walk_scope(forward.body))
    calls = [
        n
        for n in statements
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == "self"
        and n.func.attr == helper.name
    ]
    for call in calls:
        if _in_move_chain(ctx, call) or _moved_up_the_expression(ctx, call):
            return False
        bound = ctx.parents.get(call)
        if not (
            isinstance(bound, ast.Assign)
            and len(bound.targets) == 1
            and isinstance(bound.targets[0], ast.Name)
        ):
            return False
        name = bound.targets[0].id
        for other in statements:
            if (
                isinstance(other, ast.Assign)
                and other is not bound
                and any(isinstance(t, ast.Name) and t.id == name for t in other.targets)
                and any(
                    isinstance(n, ast.Attribute) and n.attr in _MOVES for n in ast.walk(other.value)
                )
            ):
                return False  # `h = h.to(x.device)`
    return bool(calls)


def _handed_to_another_file(
    ctx: ModuleContext, call: ast.Call, forward: ast.FunctionDef
) -> tuple[str, int] | None:
    """(qualified function, argument position) when the factory's tensor is bound to a name
    whose every read in the forward is that positional argument of one function imported
    from another file of the project (`commons.fused_add_tanh_sigmoid_multiply(a, b,
    n_channels_tensor)`): whether it meets a tensor is that function's to say."""
    bound = _bound_to(call, ctx)
    if bound is None or "import" not in ctx.source:
        return None
    name = bound[0]
    handed: set[tuple[str, int]] = set()
    for use in walk_scope(forward.body):
        if not (isinstance(use, ast.Name) and use.id == name) or use is bound[1].targets[0]:
            continue
        site = ctx.parents.get(use)
        if not isinstance(use.ctx, ast.Load) or not isinstance(site, ast.Call):
            return None
        if use not in site.args or any(isinstance(a, ast.Starred) for a in site.args):
            return None
        symbol = callee_symbol(ctx, site.func)
        if symbol is None:
            return None
        handed.add((symbol, site.args.index(use)))
    return handed.pop() if len(handed) == 1 else None


def _functions_with_dtype_copies(ctx: ModuleContext) -> set[int]:
    """The module-level functions (ids) holding a `dtype=<name>.dtype` keyword anywhere: the
    only ones `_check_dtype_copies` can report in (it needs that keyword on a factory call),
    found from the walk's keywords instead of walking every function's body (memoised: the
    check and `applies` both ask)."""
    memo = ctx.memo_table("device_mismatch.dtype_copies")
    if "" in memo:
        return memo[""]  # type: ignore[no-any-return]
    found: set[int] = set()
    tree = ctx.tree
    for keyword in ctx.nodes_by_type().get(ast.keyword, ()):
        assert isinstance(keyword, ast.keyword)
        value = keyword.value
        if not (
            keyword.arg == "dtype"
            and isinstance(value, ast.Attribute)
            and value.attr == "dtype"
            and isinstance(value.value, ast.Name)
        ):
            continue
        node: ast.AST = keyword
        parent = ctx.parents.get(node)
        while parent is not None and parent is not tree:
            node, parent = parent, ctx.parents.get(parent)
        if parent is tree:
            found.add(id(node))
    memo[""] = found
    return found


def _copies_a_dtype(ctx: ModuleContext) -> bool:
    """A module-level function builds a tensor with `dtype=<its parameter>.dtype`."""
    copying = _functions_with_dtype_copies(ctx)
    for fn in ctx.tree.body:
        if isinstance(fn, ast.FunctionDef) and id(fn) in copying:
            params = {a.arg for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]}
            if any(
                isinstance(n, ast.Call) and _dtype_source(n) in params for n in walk_scope(fn.body)
            ):
                return True
    return False


def _dtype_source(call: ast.Call) -> str | None:
    """`x` of `dtype=x.dtype`."""
    dtype = kwarg(call, "dtype")
    if (
        isinstance(dtype, ast.Attribute)
        and dtype.attr == "dtype"
        and isinstance(dtype.value, ast.Name)
    ):
        return dtype.value.id
    return None


def _forward_and_helpers(cls: ast.ClassDef) -> list[ast.FunctionDef]:
    """A module's `forward` and the methods of its own it runs (`self.time_delay_agg(...)`,
    transitively): they run on every batch, on the model's device."""
    methods = {s.name: s for s in cls.body if isinstance(s, ast.FunctionDef)}
    forward = methods.get("forward")
    return [] if forward is None else _with_own_callees(forward, methods)


_STEP_METHODS = frozenset(
    {"update", "training_step", "validation_step", "test_step", "train_step", "learn"}
)


def _step_methods(cls: ast.ClassDef) -> list[ast.FunctionDef]:
    """A module's per-batch methods other than `forward` (DomainBed's `update(minibatches)`,
    Lightning's `training_step`, `forward_c`/`forward_s` variants) and the methods of its own
    they run."""
    methods = {s.name: s for s in cls.body if isinstance(s, ast.FunctionDef)}
    found: list[ast.FunctionDef] = []
    for name, method in methods.items():
        if name in _STEP_METHODS or name.startswith("forward_"):
            found += [m for m in _with_own_callees(method, methods) if m not in found]
    return found


def _cuda_literal_device(call: ast.Call) -> bool:
    """`device='cuda'` / `device="cuda:0"` / `device=torch.device('cuda')`."""
    device = kwarg(call, "device")
    if isinstance(device, ast.Call) and device.args:
        device = device.args[0] if terminal_name(device.func) == "device" else None
    return (
        isinstance(device, ast.Constant)
        and isinstance(device.value, str)
        and device.value.startswith("cuda")
    )


def _with_own_callees(
    entry: ast.FunctionDef, methods: dict[str, ast.FunctionDef]
) -> list[ast.FunctionDef]:
    found = [entry]
    for method in found:  # grows while it is walked: the callees' callees too
        for node in walk_scope(method.body):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "self"
                and node.func.attr in methods
                and methods[node.func.attr] not in found
            ):
                found.append(methods[node.func.attr])
    return found


def _called_per_batch(cls: ast.ClassDef) -> list[ast.FunctionDef]:
    """A plain loss class called like a module on each batch (`__call__(p, targets)`), and
    the methods of its own that `__call__` runs (`self.build_targets(...)`):
    the tensors it builds meet the model's outputs."""
    methods = {s.name: s for s in cls.body if isinstance(s, ast.FunctionDef)}
    call = methods.get("__call__")
    if call is None or len(call.args.args) < 2 or not _bound_to_training(cls, methods):
        return []
    return _with_own_callees(call, methods)


def _bound_to_training(cls: ast.ClassDef, methods: dict[str, ast.FunctionDef]) -> bool:
    """A loss object (`ComputeLoss`, `YOLOLoss`), or one built over a model (its `__init__`
    reads `model.parameters()`): not a dataset transform, whose `__call__(image, target)`
    runs in the loader on the CPU."""
    if "loss" in cls.name.lower():
        return True
    init = methods.get("__init__")
    return init is not None and any(
        isinstance(n, ast.Attribute) and n.attr == "parameters" for n in ast.walk(init)
    )


def _placed(ctx: ModuleContext, call: ast.Call) -> bool:
    if kwarg(call, "device") is not None or any(k.arg is None for k in call.keywords):
        return True
    if kwarg(call, "out") is not None or _moved_up_the_expression(ctx, call):
        return True  # written into `out=` (its device), or the expression around it is moved
    scalar = bool(call.args) and (
        isinstance(call.args[0], ast.Constant)
        or _scalar_arithmetic(call.args[0])
        or _number_parameter(ctx, call.args[0])
    )
    if scalar and ctx.flow.qualname_of(call) == "torch.tensor":
        return not _stacked_with_tensors(ctx, call)
    node: ast.AST = call
    parent = ctx.parents.get(node)
    while parent is not None and (
        isinstance(parent, ast.Attribute | ast.Tuple)
        or (isinstance(parent, ast.Call) and parent.func is node)
        or _scalar_comparison(parent, node)
        or _scaled(parent, node)
        or (isinstance(parent, ast.Subscript) and parent.value is node)
    ):
        node, parent = parent, ctx.parents.get(parent)
    if isinstance(parent, ast.Assign) and all(isinstance(t, ast.Subscript) for t in parent.targets):
        return True  # written into an existing tensor (`gain[2:6] = ...`): copied onto its device
    return isinstance(parent, ast.Subscript) and parent.slice is node  # an index tensor


_JOINS = frozenset({"torch.stack", "torch.cat", "torch.concat", "torch.vstack", "torch.hstack"})


def _stacked_with_tensors(ctx: ModuleContext, call: ast.Call) -> bool:
    """A scalar factory (`torch.tensor(0).float()`) put in a list that `torch.stack` or
    `torch.cat` joins, directly or appended to a list the same function joins
    (retinanet's `regression_losses.append(torch.tensor(0).float())`, then
    `torch.stack(regression_losses)`): unlike arithmetic, a join takes no 0-dim CPU tensor
    beside CUDA ones."""
    node: ast.AST = call
    parent = ctx.parents.get(node)
    while isinstance(parent, ast.Attribute) or (
        isinstance(parent, ast.Call) and parent.func is node
    ):
        node, parent = parent, ctx.parents.get(parent)
    if isinstance(parent, ast.List | ast.Tuple):
        joined = ctx.parents.get(parent)
        return (
            isinstance(joined, ast.Call)
            and ctx.flow.qualname_of(joined) in _JOINS
            and bool(joined.args)
            and joined.args[0] is parent
        )
    if not (
        isinstance(parent, ast.Call)
        and isinstance(parent.func, ast.Attribute)
        and parent.func.attr == "append"
        and isinstance(parent.func.value, ast.Name)
        and parent.args == [node]
    ):
        return False
    listed = parent.func.value.id
    scope = ctx.enclosing_function(call)
    return scope is not None and any(
        isinstance(join, ast.Call)
        and ctx.flow.qualname_of(join) in _JOINS
        and bool(join.args)
        and isinstance(join.args[0], ast.Name)
        and join.args[0].id == listed
        for join in walk_tree(scope)
    )


def _moved_up_the_expression(ctx: ModuleContext, call: ast.Call) -> bool:
    """The statement moves what the factory's value becomes: `((torch.arange(L) % n == k) &
    mask).to(dtype).to(device)`, `Variable(torch.zeros(n)).to(x.device)`, `to_var(torch.
    randn(b, z))`, `torch.cat([torch.ones(b), torch.zeros(2 * b)]).to(image.device)`:
    arithmetic, comparisons, joins, wrappers and method chains up to a `.to(...)`,
    `.cuda(...)` or `.type_as(...)`, or a one-argument helper named for moving its argument.
    (A bare `.cuda()` is judged by `_pinned_to_cuda` first.)"""
    node: ast.AST = call
    parent = ctx.parents.get(node)
    while parent is not None and not isinstance(parent, ast.stmt):
        if isinstance(parent, ast.Attribute) and parent.attr in _MOVES:
            return True
        if isinstance(parent, ast.Call) and parent.args == [node] and _names_a_mover(parent.func):
            return True
        if isinstance(parent, ast.List | ast.Tuple) and _joined(ctx, parent):
            node = ctx.parents[parent]  # the join: `torch.cat([f(n), g(n)]).to(d)`
            parent = ctx.parents.get(node)
            continue
        if not (
            isinstance(parent, ast.Attribute | ast.BinOp | ast.BoolOp | ast.Compare | ast.UnaryOp)
            or (isinstance(parent, ast.Call) and parent.func is node)
            or (isinstance(parent, ast.Subscript) and parent.value is node)
            or _wrapped(ctx, parent, node)
        ):
            return False
        node, parent = parent, ctx.parents.get(parent)
    return False


def _joined(ctx: ModuleContext, items: ast.List | ast.Tuple) -> bool:
    """`items` is what `torch.cat`/`torch.stack` joins: the result lives where its parts do."""
    join = ctx.parents.get(items)
    return (
        isinstance(join, ast.Call)
        and bool(join.args)
        and join.args[0] is items
        and ctx.flow.qualname_of(join) in _JOINS
    )


def _names_a_mover(func: ast.expr) -> bool:
    """`to_var`, `to_cuda`, `to_device`, `to_gpu`, `move_to_device` (a project's helper that
    puts its argument on the run's device)."""
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
    return _MOVER_NAME.fullmatch(name) is not None


def _pinned_to_cuda(ctx: ModuleContext, call: ast.Call) -> bool:
    """`torch.arange(n).repeat(b, 1).cuda()`: moved by an argument-less `.cuda()` in the same
    chain (through `Variable(...)`), to whichever GPU is current rather than the input's
    device."""
    node: ast.AST = call
    parent = ctx.parents.get(node)
    while parent is not None and (
        isinstance(parent, ast.Attribute)
        or (isinstance(parent, ast.Call) and parent.func is node)
        or _wrapped(ctx, parent, node)  # `Variable(torch.zeros(n)).cuda()`
    ):
        if isinstance(parent, ast.Attribute) and parent.attr in _MOVES:
            above = ctx.parents.get(parent)
            return (
                parent.attr == "cuda"
                and isinstance(above, ast.Call)
                and not above.args
                and not above.keywords
            )
        node, parent = parent, ctx.parents.get(parent)
    return False


def _cuda_guarded(ctx: ModuleContext, call: ast.Call, forward: ast.FunctionDef) -> bool:
    """Under either branch of `if x.is_cuda:` / `if torch.cuda.is_available():`: the code
    chose the device on purpose."""
    for guard_test, _ in _conditions_around(ctx, call, forward):
        test = guard_test.operand if isinstance(guard_test, ast.UnaryOp) else guard_test
        if _is_cuda_test(ctx, test):
            return True
    return False


def _conditions_around(
    ctx: ModuleContext, call: ast.expr, forward: ast.FunctionDef
) -> list[tuple[ast.expr, str]]:
    """The tests of the `if` statements and conditional expressions around `call` within
    the forward, each with the part `call` is in ('body' or 'orelse'); SentEval's
    `torch.from_numpy(i).cuda() if self.is_cuda() else torch.from_numpy(i)`."""
    found = [(guard.test, part) for guard, part in enclosing_ifs(ctx, call, forward)]
    child: ast.AST = call
    for anc in ctx.ancestors(call):
        if anc is forward:
            break
        if isinstance(anc, ast.IfExp) and child is not anc.test:
            found.append((anc.test, "body" if child is anc.body else "orelse"))
        child = anc
    return found


def _scaled(parent: ast.AST, node: ast.AST) -> bool:
    """`torch.ones(n) * i`: arithmetic with a plain number or name keeps the tensor where it
    is, so a `.to(device)` after it still places it (`(torch.ones(n) * i).to(device)`)."""
    if not isinstance(parent, ast.BinOp):
        return False
    other = parent.right if parent.left is node else parent.left
    if isinstance(other, ast.UnaryOp):  # `* -1`
        other = other.operand
    return isinstance(other, ast.Constant | ast.Name)


def _bound_to(call: ast.Call, ctx: ModuleContext) -> tuple[str, ast.Assign] | None:
    """`name = torch.zeros(size)` (through `Variable(...)`, `.float()`, `* -1`): the name the
    factory's tensor is bound to, and that assignment."""
    node: ast.AST = call
    parent = ctx.parents.get(call)
    while parent is not None and (
        _scaled(parent, node)  # `torch.ones(shape) * -1`
        or _wrapped(ctx, parent, node)  # `Variable(torch.Tensor(...))`, `.float()`
    ):
        result = ctx.parents.get(parent) if isinstance(parent, ast.Attribute) else parent
        if result is None:
            return None
        node, parent = result, ctx.parents.get(result)
    if not (
        isinstance(parent, ast.Assign)
        and len(parent.targets) == 1
        and isinstance(parent.targets[0], ast.Name)
    ):
        return None
    return parent.targets[0].id, parent


def _cached_on_self_and_returned(
    ctx: ModuleContext, factory: ast.Call, method: ast.FunctionDef
) -> bool:
    """The factory's tensor, through torch or helper calls that keep its device
    (`torch.triu(utils.fill_with_neg_inf(torch.zeros([dim, dim])), 1)`), is cached in a plain
    attribute (`self._future_mask = ...`) that the method returns (`return
    self._future_mask[:dim, :dim]`) and never moves: fairseq's decoder built its causal
    mask on the CPU once and handed it to the attention on the GPU (`810e61a`)."""
    node: ast.AST = factory
    parent = ctx.parents.get(node)
    while isinstance(parent, ast.Call) and node in parent.args:
        if terminal_name(parent.func) in _MOVES:
            return False
        node, parent = parent, ctx.parents.get(parent)
    if not (
        isinstance(parent, ast.Assign)
        and parent.value is node
        and len(parent.targets) == 1
        and isinstance(parent.targets[0], ast.Attribute)
        and isinstance(parent.targets[0].value, ast.Name)
        and parent.targets[0].value.id == "self"
    ):
        return False
    attribute = parent.targets[0].attr
    returned = False
    for inner in walk_scope(method.body):
        if (
            isinstance(inner, ast.Call)
            and isinstance(inner.func, ast.Attribute)
            and inner.func.attr in _MOVES
            and attribute in ast.unparse(inner.func.value)
        ):
            return False  # `self._mask = self._mask.to(x)`: moved before it is handed on
        if isinstance(inner, ast.Return) and inner.value is not None:
            value = inner.value
            while isinstance(value, ast.Subscript):
                value = value.value
            returned = returned or (
                isinstance(value, ast.Attribute)
                and value.attr == attribute
                and isinstance(value.value, ast.Name)
                and value.value.id == "self"
            )
    return returned


_NESTED_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _given_a_device(call: ast.Call) -> bool:
    device = kwarg(call, "device")
    return device is not None and not (
        isinstance(device, ast.Constant) and str(device.value).startswith("cpu")
    )


def _input_names(fn: ast.FunctionDef, nodes: list[ast.AST]) -> set[str]:
    """The function's parameters and the names unpacked or sliced straight from them
    (`features, lengths, transitions = features_tuple`)."""
    names = {a.arg for a in [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]}
    names.discard("self")
    for node in nodes:
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Name | ast.Subscript)
            and _root(node.value) in names
        ):
            for target in node.targets:
                elements = target.elts if isinstance(target, ast.Tuple | ast.List) else [target]
                names |= {e.id for e in elements if isinstance(e, ast.Name)}
    return names


def _root(node: ast.AST) -> str:
    while isinstance(node, ast.Attribute | ast.Subscript | ast.Call):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else ""


def _rebound_or_moved(node: ast.AST, name: str) -> bool:
    """`name = ...` again (not a slice of itself, `name = name[:, :-1]`), or
    `name.to(...)`/`name.cuda()`: the name may be placed."""
    if isinstance(node, ast.Assign):
        sliced = _root(node.value) == name and not any(
            isinstance(n, ast.Call) and terminal_name(n.func) in _MOVES
            for n in ast.walk(node.value)
        )
        return not sliced and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in _MOVES
        and _root(node.func.value) == name
    )


def _met_by_arithmetic(nodes: list[ast.AST], name: str, inputs: set[str]) -> str | None:
    """An arithmetic operation of `name` (sliced or reshaped) with an input tensor: the
    input's text, or None."""
    for node in nodes:
        if not isinstance(node, ast.BinOp) or isinstance(node.op, ast.Mod):
            continue
        sides = (_root(node.left), _root(node.right))
        if name in sides:
            other = node.right if sides[0] == name else node.left
            root = _root(other)
            if root in inputs and root != name and _tensor_like(other, root, nodes):
                return ast.unparse(other)
    return None


_TENSOR_READS = frozenset(
    {"shape", "size", "device", "dtype", "numel", "dim", "unsqueeze", "view", "reshape",
     "flatten", "bool", "float", "long", "sum", "mean", "max", "min", "masked_fill"}
)  # fmt: skip


_NUMBER_READS = frozenset({"numel", "size", "shape", "item", "dim", "tolist", "ndim"})


def _tensor_like(operand: ast.expr, root: str, nodes: list[ast.AST]) -> bool:
    """A slice or method result of an input (`features[:n, t]`), or an input the function
    reads as a tensor (`masks.shape`, `masks.numel()`): not a size handed in as a number."""
    if any(isinstance(n, ast.Attribute) and n.attr in _NUMBER_READS for n in ast.walk(operand)):
        return False  # `values.numel()`, `x.shape[0]`, `x.size(1)`: a number
    if not isinstance(operand, ast.Name):
        return True
    return any(
        isinstance(n, ast.Subscript | ast.Attribute)
        and isinstance(n.value, ast.Name)
        and n.value.id == root
        and (isinstance(n, ast.Subscript) or n.attr in _TENSOR_READS)
        for n in nodes
    )


def _moved_at_each_use(call: ast.Call, forward: ast.FunctionDef, ctx: ModuleContext) -> bool:
    """`ids = torch.LongTensor(ids)`, reshaped on the host, then handed on as
    `Variable(ids).cuda()` under `if torch.cuda.is_available():` and as is on the `else`
    branch (a character-LSTM tagger of the Variable era): every use that meets other tensors
    moves it first or runs only on the CPU."""
    bound = _bound_to(call, ctx)
    if bound is None:
        return False
    name, assign = bound
    moved = False
    for node in walk_scope(forward.body):
        if not (
            isinstance(node, ast.Name)
            and node.id == name
            and isinstance(node.ctx, ast.Load)
            and node.lineno > (assign.end_lineno or assign.lineno)
        ):
            continue
        if _host_side_read(ctx, node, name):
            continue
        if _in_move_chain(ctx, node):
            moved = True
            continue
        if not _on_cpu_branch(ctx, node, forward):
            return False
    return moved


def _in_move_chain(ctx: ModuleContext, node: ast.expr) -> bool:
    """`Variable(node).cuda()`, `node.long().to(device)`: moved before it meets anything."""
    child: ast.AST = node
    parent = ctx.parents.get(node)
    while parent is not None:
        if isinstance(parent, ast.Attribute) and parent.value is child:
            if parent.attr in _MOVES:
                return True
            call = ctx.parents.get(parent)
            if isinstance(call, ast.Call) and call.func is parent:
                child, parent = call, ctx.parents.get(call)  # `node.long()`: stays where it is
            else:
                child, parent = parent, call  # `node.data`
        elif _wrapped(ctx, parent, child):  # `Variable(node)`
            child, parent = parent, ctx.parents.get(parent)
        else:
            return False
    return False


def _host_side_read(ctx: ModuleContext, node: ast.Name, name: str) -> bool:
    """A read that meets no tensor of another device: `name = name.unsqueeze(0)` (a shaping
    method rebinding the name), or `name = torch.cat((name, part.cpu()), 0)` with every other
    part brought to the host explicitly."""
    parent = ctx.parents.get(node)
    statement = ctx.parents.get(parent) if parent is not None else None
    if (
        isinstance(parent, ast.Attribute)
        and parent.attr in _SHAPING_METHODS
        and isinstance(statement, ast.Call)
        and _rebinds(ctx.parents.get(statement), name)
    ):
        return True
    if isinstance(parent, ast.Tuple | ast.List) and isinstance(statement, ast.Call):
        if ctx.flow.qualname_of(statement) not in ("torch.cat", "torch.stack"):
            return False
        others = [e for e in parent.elts if e is not node]
        return bool(others) and all(_on_host(e) for e in others)
    return False


def _rebinds(statement: ast.AST | None, name: str) -> bool:
    return (
        isinstance(statement, ast.Assign)
        and len(statement.targets) == 1
        and isinstance(statement.targets[0], ast.Name)
        and statement.targets[0].id == name
    )


def _on_host(expr: ast.expr) -> bool:
    """`part.cpu()`, `part.cpu().data`, `part.detach().cpu()`: explicitly on the host."""
    while isinstance(expr, ast.Attribute | ast.Call):
        if isinstance(expr, ast.Call):
            if isinstance(expr.func, ast.Attribute) and expr.func.attr == "cpu":
                return True
            expr = expr.func
        else:
            expr = expr.value
    return False


def _moved_when_bound(call: ast.Call, forward: ast.FunctionDef, ctx: ModuleContext) -> bool:
    """`zeros = torch.zeros(size)` followed in the forward by `zeros = zeros.cuda()` (under
    `if x.is_cuda:` in a public KFAC-friendly Gaussian head): the name is moved before use."""
    bound = _bound_to(call, ctx)
    if bound is None:
        return False
    name, parent = bound
    for node in walk_scope(forward.body):
        if (
            isinstance(node, ast.Assign)
            and node.lineno > parent.lineno
            and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Attribute)
            and node.value.func.attr in _MOVES
            and any(  # `zeros.cuda()`, `Variable(noise.float()).type_as(mu)`
                isinstance(n, ast.Name) and n.id == name for n in ast.walk(node.value.func.value)
            )
        ):
            return not _read_between(ctx, forward, name, parent, node)
    return False


def _read_between(
    ctx: ModuleContext, forward: ast.FunctionDef, name: str, bound: ast.stmt, moved: ast.stmt
) -> bool:
    """`name` is read after its binding and before the statement that moves it (not in the
    move itself), other than handed to a plain function (SSD's `match(..., loc_t, conf_t,
    idx)` fills its target tensors in place): it met the other tensors while still on the
    CPU (`total = x.mean() + dist`)."""
    start, end = bound.end_lineno or bound.lineno, moved.lineno
    for n in walk_scope(forward.body):
        if not (
            isinstance(n, ast.Name)
            and n.id == name
            and isinstance(n.ctx, ast.Load)
            and start < n.lineno < end
        ):
            continue
        parent = ctx.parents.get(n)
        if (
            isinstance(parent, ast.Call)
            and n in parent.args
            and not (ctx.flow.qualname_of(parent) or "").startswith("torch.")
        ):
            continue  # an argument of a helper, which may fill it in place
        if _host_side_read(ctx, n, name):
            continue  # reshaped, or concatenated with parts explicitly on the host
        if _literal_fill(ctx, n):
            continue  # `attr[:, 7] = 1`: written on the CPU, it meets no other tensor yet
        return True
    return False


def _empty_default(ctx: ModuleContext, call: ast.Call) -> bool:
    """`inputs.get("continuous", torch.empty(0, 0))`: a tensor with no elements standing in
    for an input the batch dict lacks (pytorch_tabular's embedding layers, which then test
    `.shape[1] > 0`). It holds nothing to move; a default with elements
    (`batch.get("mask", torch.ones(n))`) is not this."""
    parent = ctx.parents.get(call)
    sizes = [a.elts if isinstance(a, ast.Tuple | ast.List) else [a] for a in call.args]
    return (
        isinstance(parent, ast.Call)
        and isinstance(parent.func, ast.Attribute)
        and parent.func.attr == "get"
        and len(parent.args) == 2
        and parent.args[1] is call
        and ctx.flow.qualname_of(call) in ("torch.empty", "torch.zeros", "torch.ones")
        and any(isinstance(e, ast.Constant) and e.value == 0 for size in sizes for e in size)
    )


def _literal_fill(ctx: ModuleContext, name: ast.Name) -> bool:
    """`name[:, 0] = 4`: the tensor filled in place with a literal at literal positions
    (pretrain-gnns' self-loop edge attributes, built and then moved to the edges' device).
    Neither side is a tensor, so the CPU tensor meets no other device; an index or a value
    that is a name may be a CUDA tensor and is not this."""
    target = ctx.parents.get(name)
    statement = ctx.parents.get(target) if target is not None else None
    return (
        isinstance(target, ast.Subscript)
        and target.value is name
        and isinstance(target.ctx, ast.Store)
        and isinstance(statement, ast.Assign | ast.AugAssign)
        and _literal(statement.value)
        and _host_index(ctx, target.slice)
    )


def _host_index(ctx: ModuleContext, index: ast.expr) -> bool:
    """Literal positions, or names bound only to Python lists (graphsage-simple's
    `mask[row_indices, column_indices] = 1`, both built by list comprehensions): no tensor."""
    if isinstance(index, ast.Tuple):
        return all(_host_index(ctx, e) for e in index.elts)
    if isinstance(index, ast.Name):
        values = ctx.flow.definitions(index)
        return bool(values) and all(isinstance(v, ast.List | ast.ListComp) for v in values)
    return _literal(index)


def _literal(node: ast.expr | None) -> bool:
    """A number, `-1`, a slice of numbers (`:`, `1:`) or a tuple of those."""
    if node is None or isinstance(node, ast.Constant):
        return node is None or isinstance(node.value, int | float | bool)
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, ast.USub | ast.UAdd) and _literal(node.operand)
    if isinstance(node, ast.Slice):
        return _literal(node.lower) and _literal(node.upper) and _literal(node.step)
    if isinstance(node, ast.Tuple):
        return all(_literal(e) for e in node.elts)
    return False


_RESHAPES = frozenset(
    {"view", "reshape", "flatten", "squeeze", "unsqueeze", "expand", "repeat", "permute"}
)
"""Methods whose result stays on the tensor's device whatever their arguments."""


def _wrapped(ctx: ModuleContext, parent: ast.AST | None, node: ast.AST) -> bool:
    """`Variable(node)` (the same tensor), `node.float()` or `node.view(-1)`: an
    argument-free method call, or a reshape, whose result stays where `node` is; for a
    method, `parent` is the attribute."""
    if isinstance(parent, ast.Call):
        return (
            parent.args == [node]
            and not parent.keywords
            and (ctx.flow.qualname_of(parent) or "").endswith("autograd.Variable")
        )
    if isinstance(parent, ast.Attribute) and parent.value is node and parent.attr not in _MOVES:
        call = ctx.parents.get(parent)
        return (
            isinstance(call, ast.Call)
            and call.func is parent
            and ((not call.args and not call.keywords) or parent.attr in _RESHAPES)
        )
    return False


def _logged_beside_detached(ctx: ModuleContext, call: ast.Call) -> bool:
    """The factory is a value of a dict display whose other values include a detached
    tensor (`{"g_loss": g_loss.detach().mean(), "disc_factor": torch.tensor(f)}`): a dict
    of values to log, which no computation on the device reads."""
    parent = ctx.parents.get(call)
    if not isinstance(parent, ast.Dict) or not any(v is call for v in parent.values):
        return False
    return any(
        v is not call
        and any(isinstance(n, ast.Attribute) and n.attr == "detach" for n in walk_tree(v))
        for v in parent.values
    )


def _scalar_comparison(parent: ast.AST, node: ast.AST) -> bool:
    """`torch.arange(n) != self.cls_position`: compared with literals or configuration
    attributes of the module, the mask stays on the host with its operand (a comparison
    with a tensor, `torch.arange(n) < lengths[:, None]`, is not one)."""
    return (
        isinstance(parent, ast.Compare)
        and parent.left is node
        and all(_literal_or_setting(c) for c in parent.comparators)
    )


def _literal_or_setting(expr: ast.expr) -> bool:
    """`0`, `-1`, or an attribute chain on `self` (`self.pooler.cls_token_position`)."""
    if isinstance(expr, ast.UnaryOp):
        expr = expr.operand
    if isinstance(expr, ast.Constant):
        return True
    if not isinstance(expr, ast.Attribute):
        return False
    root: ast.expr = expr
    while isinstance(root, ast.Attribute):
        root = root.value
    return isinstance(root, ast.Name) and root.id == "self"


def _on_cpu_branch(ctx: ModuleContext, call: ast.expr, forward: ast.FunctionDef) -> bool:
    """The forward branches on the device and `call` runs only on the CPU: the `else` of
    `if x.is_cuda:` (or `if torch.cuda.is_available():`), or the body of `if not x.is_cuda:`."""
    for guard_test, part in _conditions_around(ctx, call, forward):
        negated = isinstance(guard_test, ast.UnaryOp) and isinstance(guard_test.op, ast.Not)
        test = guard_test.operand if isinstance(guard_test, ast.UnaryOp) else guard_test
        if _is_cuda_test(ctx, test) and (part == "orelse") != negated:
            return True
    return False


def _is_cuda_test(ctx: ModuleContext, test: ast.expr) -> bool:
    """`x.is_cuda` or `torch.cuda.is_available()` (pytorch-retinanet's focal loss builds its
    weights with `.cuda()` on one branch and on the CPU on the other), or a name bound only to
    one (`is_cuda_tensor = x.is_cuda`, `use_cuda = torch.cuda.is_available()`)."""
    if isinstance(test, ast.Name):
        values = ctx.flow.definitions(test)
        return bool(values) and all(_is_cuda_test(ctx, v) for v in values if v is not test)
    if isinstance(test, ast.Call):
        if isinstance(test.func, ast.Attribute) and test.func.attr == "is_cuda":
            return True  # the module's own `self.is_cuda()` (its weights' device)
        return ctx.call_qualname(test) == "torch.cuda.is_available"
    if not isinstance(test, ast.Attribute):
        return False
    own_flag = isinstance(test.value, ast.Name) and test.value.id == "self"
    return test.attr == "is_cuda" or (own_flag and bool(_DEVICE_FLAG.fullmatch(test.attr)))


_DEVICE_FLAG = re.compile(r"(use_|on_|with_|is_|enable_)?(cuda|gpu)(_enabled)?")
"""A module's own device switch (`self.cuda = cuda` from its constructor, `self.use_gpu`):
graphsage-simple's aggregator moves with `.cuda()` under `if self.cuda:` and stays on the CPU
on the other branch."""


def _number_parameter(ctx: ModuleContext, expr: ast.expr) -> bool:
    """`torch.tensor(y_th)` where `y_th` is a parameter of the enclosing function that
    defaults to a number (`def forward(self, x, singularity_avoiding=False, y_th=10.)`) or is
    annotated `float`/`int`, and is not bound again in it: a Python scalar, so a 0-dim
    tensor."""
    if not isinstance(expr, ast.Name):
        return False
    fn = ctx.enclosing_function(expr)
    if fn is None:
        return False
    args = fn.args
    positional = [*args.posonlyargs, *args.args]
    defaults: dict[str, ast.expr | None] = dict(
        zip(
            [a.arg for a in positional[len(positional) - len(args.defaults) :]],
            args.defaults,
            strict=True,
        )
    )
    defaults.update(zip([a.arg for a in args.kwonlyargs], args.kw_defaults, strict=True))
    params = {a.arg: a for a in [*positional, *args.kwonlyargs]}
    param = params.get(expr.id)
    if param is None:
        return False
    annotated = isinstance(param.annotation, ast.Name) and param.annotation.id in ("float", "int")
    if not (_number(defaults.get(expr.id) or ast.Constant(None)) or annotated):
        return False
    return not any(
        isinstance(node, ast.Name) and node.id == expr.id and isinstance(node.ctx, ast.Store)
        for node in walk_scope(fn.body)
    )


def _scalar_arithmetic(expr: ast.expr) -> bool:
    """`-1`, `2.0 / torch.pi`, `self.config.n_embd ** 0.5`: arithmetic over numbers, names
    and attributes with at least one number, so a Python scalar (the tensor is 0-dim)."""
    return (
        isinstance(expr, ast.BinOp | ast.UnaryOp)
        and _arithmetic(expr)
        and any(_number(n) for n in walk_tree(expr))
    )


def _arithmetic(expr: ast.expr) -> bool:
    if isinstance(expr, ast.BinOp):
        return _arithmetic(expr.left) and _arithmetic(expr.right)
    if isinstance(expr, ast.UnaryOp):
        return _arithmetic(expr.operand)
    return _number(expr) or isinstance(expr, ast.Name | ast.Attribute)


def _number(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
    )


def _host_only(ctx: ModuleContext, call: ast.Call, forward: ast.FunctionDef) -> bool:
    """The tensor, and what torch functions derive from it, is only iterated, used in list
    slices, turned into Python values (a multi-crop wrapper counting crop sizes) or decides a
    branch (`if self.training and torch.rand(1) < p:`): it never meets a tensor on the
    model's device."""
    if _decides_a_branch(ctx, call):
        return True
    pending: list[str] = []
    if not _reaches_binding(ctx, call, pending):
        return False
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for use in walk_scope(forward.body):
            if not (isinstance(use, ast.Name) and use.id == name):
                continue
            if not isinstance(use.ctx, ast.Load) or _before(use, call, forward):
                continue
            if not (
                _host_use(ctx, use) or _reported(ctx, use) or _reaches_binding(ctx, use, pending)
            ):
                return False
    return True


def _decides_a_branch(ctx: ModuleContext, call: ast.Call) -> bool:
    """Compared and combined into the test of an `if`, `while`, conditional expression or
    `assert`: read as one Python bool."""
    node: ast.AST = call
    parent = ctx.parents.get(node)
    while isinstance(parent, ast.Compare | ast.BoolOp | ast.UnaryOp):
        node, parent = parent, ctx.parents.get(parent)
    return (
        node is not call
        and isinstance(parent, ast.If | ast.While | ast.IfExp | ast.Assert)
        and parent.test is node
    )


def _data_transform(cls: ast.ClassDef) -> bool:
    """A data transform (`class ToDense(BaseTransform)`, torchvision's `v2.Transform`): its
    `forward` takes a sample where the data pipeline holds it, not the model's input."""
    return any(
        (base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")).endswith("Transform")
        for base in cls.bases
    )


def _before(use: ast.Name, call: ast.Call, forward: ast.FunctionDef) -> bool:
    """`use` runs before the factory on every path: earlier in the forward, and no loop of it
    can bring the factory's value back around (`p = loss_fn(x)` in the `if`, the factory in
    the `else`: the `if` branch's reads never see the factory's tensor)."""
    if (use.lineno, use.col_offset) >= (call.lineno, call.col_offset):
        return False
    return not any(
        isinstance(loop, ast.For | ast.While)
        and loop.lineno <= use.lineno
        and call.lineno <= (loop.end_lineno or loop.lineno)
        for loop in walk_scope(forward.body)
    )


def _reported(ctx: ModuleContext, use: ast.Name) -> bool:
    """`{"p_loss": p_loss.detach().mean()}`: detached (through argument-free methods) into a
    dict display, a value for the logs that no computation on the device reads."""
    child: ast.AST = use
    parent = ctx.parents.get(child)
    detached = False
    while isinstance(parent, ast.Attribute) and parent.value is child:
        call = ctx.parents.get(parent)
        if not (isinstance(call, ast.Call) and call.func is parent) or call.args or call.keywords:
            return False
        detached = detached or parent.attr == "detach"
        child, parent = call, ctx.parents.get(call)
    return detached and isinstance(parent, ast.Dict) and any(v is child for v in parent.values)


def _reaches_binding(ctx: ModuleContext, node: ast.expr, names: list[str]) -> bool:
    """`node` flows, through torch functions of it alone, indexing and argument-free methods,
    into Python values (`.tolist()`) or into plain names (added to `names`)."""
    child: ast.AST = node
    parent = ctx.parents.get(child)
    while parent is not None:
        if isinstance(parent, ast.Assign) and parent.value is child:
            targets = [n for t in parent.targets for n in walk_tree(t)]
            if any(isinstance(n, ast.Attribute | ast.Subscript | ast.Starred) for n in targets):
                return False
            names.extend(n.id for n in targets if isinstance(n, ast.Name))
            return True
        if isinstance(parent, ast.Attribute) and parent.value is child:
            call = ctx.parents.get(parent)
            if parent.attr in _RESULT_FIELDS and not (
                isinstance(call, ast.Call) and call.func is parent
            ):
                child, parent = parent, call
                continue  # `.topk(k).indices`: a field of the result, still a host tensor
            if not isinstance(call, ast.Call) or call.func is not parent:
                return False
            if _other_values(call) and parent.attr not in _SHAPING_METHODS:
                return False
            if parent.attr in _TO_HOST:
                return True
            parent = call
        elif isinstance(parent, ast.Call) and parent.func is not child:
            qual = ctx.flow.qualname_of(parent) or ""
            if not qual.startswith("torch.") or _other_values(parent, child):
                return False
        elif not (isinstance(parent, ast.Subscript) and parent.value is child):
            return False
        child, parent = parent, ctx.parents.get(parent)
    return False


def _other_values(call: ast.Call, operand: ast.AST | None = None) -> bool:
    """Arguments other than `operand` that are not literals (a second tensor would meet it)."""
    passed = [*call.args, *(k.value for k in call.keywords)]
    return any(a is not operand and not isinstance(a, ast.Constant) for a in passed)


def _host_use(ctx: ModuleContext, use: ast.Name) -> bool:
    """`for end in sizes`, `crops[start:end]`, `int(n)`, `x[rows, keep]`: a use that stays
    on the host, or indexes a tensor (a CUDA tensor may be indexed with CPU indices)."""
    parent = ctx.parents.get(use)
    if isinstance(parent, ast.For) and parent.iter is use:
        return True
    if isinstance(parent, ast.Slice):
        return True
    index: ast.AST = use
    if isinstance(parent, ast.Tuple):
        index, parent = parent, ctx.parents.get(parent)
    if isinstance(parent, ast.Subscript) and parent.slice is index:
        return True
    if (
        isinstance(parent, ast.Call)
        and isinstance(parent.func, ast.Name)
        and parent.func.id in _HOST_BUILTINS
    ):
        return True
    return _elements_read_by_local_helper(ctx, use)


def _elements_read_by_local_helper(ctx: ModuleContext, use: ast.expr) -> bool:
    """`fused_add_tanh_sigmoid_multiply(a, b, n_channels_tensor)` where that function of the
    module only reads `n_channels[0]`: a one-element tensor of a channel count (WaveGlow's
    and its descendants' script-friendly argument) whose element, a 0-dim tensor or a
    number, mixes with any device."""
    call = ctx.parents.get(use)
    if not (
        isinstance(call, ast.Call)
        and isinstance(call.func, ast.Name)
        and use in call.args
        and not any(isinstance(a, ast.Starred) for a in call.args)
    ):
        return False
    defs = ctx.loops.functions.get(call.func.id, [])
    if len(defs) != 1:
        return False
    params = [*defs[0].args.posonlyargs, *defs[0].args.args]
    position = call.args.index(use)
    if position >= len(params):
        return False
    name = params[position].arg
    reads = [
        n
        for n in walk_scope(defs[0].body)
        if isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Load)
    ]
    return bool(reads) and all(
        isinstance(sub := ctx.parents.get(n), ast.Subscript)
        and sub.value is n
        and isinstance(sub.slice, ast.Constant)
        and isinstance(sub.slice.value, int)
        for n in reads
    )
