"""factory-without-device-in-step: a tensor created on the CPU in the step of a GPU script
and handed to the loss or the model."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.analysis.vocabulary import TENSOR_FACTORIES
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import kwarg
from torchdoctor.agent.checks.loops import TRAINING_LOOP_TEXT, walk_scope, walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import on_a_cpu_branch, uses_cuda
from torchdoctor.agent.models import Severity

_MOVES = frozenset({"to", "cuda", "type", "type_as", "to_device", "as_subclass"})
"""`.type(dtype)` counts: a legacy placement (`Variable(h).type(torch.cuda.FloatTensor)`)."""
_WRAPPERS = frozenset({"torch.autograd.Variable", "torch.autograd.variable.Variable"})
"""Pre-0.4 wrappers that hand their tensor back where it was (`Variable(z).cuda()`)."""
_FROM_DATA = frozenset(
    {"torch.tensor", "torch.as_tensor", "torch.from_numpy"}
    | {f"torch.{t}Tensor" for t in ("", "Float", "Double", "Long", "Int", "Byte", "Bool")}
)
"""Tensors made from data: on the CPU when the data is a Python list or a NumPy array (the
legacy typed constructors too: `torch.LongTensor([g.label for g in batch])`)."""


class FactoryWithoutDeviceInStep(Rule):
    """Detects, in the training step of a script that runs on CUDA, a tensor factory
    (`torch.arange/zeros/ones/full/empty/rand/randn/randint/eye/linspace`, or
    `torch.tensor/as_tensor/from_numpy` or a legacy `torch.LongTensor`/`FloatTensor` of a
    Python list or a NumPy array) called without
    `device=` whose result goes, without `.to()`/`.cuda()`, into a loss or a model call
    (`labels = torch.arange(n); loss = F.cross_entropy(logits, labels)`). A tensor made in the
    function that runs the training loop, before the loop that consumes it, counts too (PPO's
    `update`: `rewards = torch.tensor(rewards)`, then the epochs' value loss on them), and so
    does one mixed by arithmetic with a model's output (`-smooth * F.log_softmax(out, 1)`),
    and one a helper returns to a training step that hands it to the model unmoved (a
    recurrent trainer's `h_t, l_t = self.reset()`, then `self.model(x, l_t, h_t)`).

    Why it matters: factories create CPU tensors unless told otherwise; the loss or the model
    then mixes devices and the step fails on the GPU ("Expected all tensors to be on the same
    device") — while the CPU smoke test passed. Moving it afterwards (`.to(device)`) costs a
    host-to-device copy every step.

    Not reported: factories with `device=` or `*_like` variants, results moved before use,
    sequence lengths (CTC's `input_lengths`/`target_lengths`, which it takes on the host, or
    a tensor named for lengths handed to a model, `length_tensor` included: packing needs them
    on the CPU),
    results used only in CPU-side bookkeeping, factories on the CPU branch of a device test
    (the `else:` of `if self.cuda:`), steps that move none of their data to a
    device themselves and are not handed one (the model places its inputs: pipeline shards,
    RPC; a step given `device` places its own tensors), scripts with no CUDA use, code
    outside the training step.

    Example:
        logits = image_emb @ text_emb.t()
        labels = torch.arange(logits.size(0))
        loss = F.cross_entropy(logits, labels)

    Fix: create it on the right device: `torch.arange(n, device=logits.device)`.
    """

    id = "factory-without-device-in-step"
    point = 1
    severity = Severity.HIGH
    title = "CPU tensor created in a GPU training step"
    items: ClassVar[tuple[str, ...]] = ("1.3",)
    triggers = Triggers(
        (*TRAINING_LOOP_TEXT.words, ".cuda()", ".to("), all_of=TRAINING_LOOP_TEXT.all_of
    )

    def applies(self, ctx: ModuleContext) -> bool:
        return uses_cuda(ctx) and bool(ctx.loops.training_loops)

    def finish(self, ctx: ModuleContext) -> None:
        in_steps = self.applies(ctx)
        if not in_steps and not _placements(ctx)[0] and not _placements(ctx)[1]:
            return
        flow = ctx.flow
        from_data = {id(call) for call in flow.calls_to(_FROM_DATA)}
        for call in flow.calls_to(TENSOR_FACTORIES | _FROM_DATA):
            if kwarg(call, "device") is not None or on_a_cpu_branch(ctx, call):
                continue
            if id(call) in from_data and not _from_host_data(ctx, call):
                continue
            consumer = _consumer(ctx, call)
            if consumer is None or _host_side(ctx, call, consumer):
                continue
            if _placed_model(ctx, consumer):
                pass  # the model was put on a device by this code: wherever it runs
            elif not in_steps:
                continue
            elif ctx.enclosing_function(consumer) is not ctx.enclosing_function(call):
                # returned by a helper: the caller's step decides (`h, l = self.reset()`)
                if not ctx.loops.in_training_step(consumer) or not _places_batches(ctx, consumer):
                    continue
            elif not _per_step(ctx, call, consumer) or not _places_batches(ctx, call):
                continue
            own = _bound_name(ctx, call)
            other = next(
                (a for a in consumer.args if isinstance(a, ast.Name) and a.id != own), None
            )
            if ctx.enclosing_function(consumer) is not ctx.enclosing_function(call):
                other = None  # the consumer's names are the caller's, not the helper's
            ctx.report(
                self,
                call,
                f"`{ast.unparse(call.func)}(...)` creates a CPU tensor that reaches "
                f"`{ast.unparse(consumer.func)}` on the GPU: the devices do not match",
                data={"device_from": other.id} if other is not None else {},
            )


_AUTOGRAD_GRAD = frozenset({"torch.autograd.grad", "torch.autograd.functional.vjp"})
_CTC = frozenset({"torch.nn.functional.ctc_loss", "torch.ctc_loss", "torch.nn.CTCLoss"})
_CTC_LENGTHS = {2: "input_lengths", 3: "target_lengths"}
# `lengths`, `seq_lens`, and the tensor of them so named (`length_tensor`, `lengths_t`)
_LENGTHS_NAME = re.compile(r"(^|_)(lengths?|lens)(_(tensor|t))?$")


def _host_side(ctx: ModuleContext, call: ast.Call, consumer: ast.Call) -> bool:
    """The tensor is a sequence-length argument, which the consumer takes on the host: CTC's
    `input_lengths`/`target_lengths` (CPU tensors are what its cuDNN path asks for), or a
    tensor bound to a name for lengths handed to a model (`pack_padded_sequence` raises on
    CUDA lengths, so models take them on the CPU: `model(inputs, torch.IntTensor(lens))`)."""
    own = _bound_name(ctx, call)
    position = next(
        (
            i
            for i, arg in enumerate(consumer.args)
            if arg is call or (isinstance(arg, ast.Name) and own and arg.id == own)
        ),
        None,
    )
    keywords = {
        k.arg
        for k in consumer.keywords
        if k.value is call or (isinstance(k.value, ast.Name) and own and k.value.id == own)
    }
    flow = ctx.flow
    callee = (
        [consumer.func, *flow.sources(consumer.func)]
        if isinstance(consumer.func, ast.Name | ast.Attribute)
        else []
    )
    ctc = (flow.qualname_of(consumer) or "") in _CTC or any(_builds_ctc(ctx, s) for s in callee)
    if ctc and (
        _CTC_LENGTHS.get(position if position is not None else -1)
        or keywords & set(_CTC_LENGTHS.values())
    ):
        return True
    return flow.is_model_call(consumer) and bool(own) and bool(_LENGTHS_NAME.search(own.lower()))


def _builds_ctc(ctx: ModuleContext, value: ast.AST) -> bool:
    """`nn.CTCLoss(...)`, also moved (`.to(device)`) or another library's `CTCLoss()`
    (warp-ctc's)."""
    while (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Attribute)
        and value.func.attr in _MOVES
    ):
        value = value.func.value
    if not isinstance(value, ast.Call):
        return False
    qual = ctx.flow.qualname_of(value) or ""
    return qual in _CTC or qual.endswith("CTCLoss") or ast.unparse(value.func).endswith("CTCLoss")


def _per_step(ctx: ModuleContext, call: ast.Call, consumer: ast.Call) -> bool:
    """The tensor is made in the step, or in the function that runs the training loop before
    the loop that consumes it (PPO's `update` turns the episode's rewards into a tensor, then
    runs its epochs over them)."""
    if ctx.loops.in_training_step(call):
        return True
    loop = ctx.loops.loop_containing(consumer)
    return loop is not None and ctx.enclosing_function(loop.node) is ctx.enclosing_function(call)


def _from_host_data(ctx: ModuleContext, call: ast.Call) -> bool:
    """`torch.tensor(rewards)` of a Python list or a NumPy array: a CPU tensor. Of a tensor,
    it keeps that tensor's device, so only host data counts; `torch.from_numpy(a)` and the
    legacy `torch.FloatTensor(obs)` are CPU tensors whatever they are given."""
    if not call.args:
        return False
    qual = ctx.flow.qualname_of(call) or ""
    if qual.endswith(("from_numpy", "Tensor")):
        return True  # a legacy typed constructor makes a CPU tensor of whatever it is given
    data = call.args[0]
    sources = [data, *ctx.flow.sources(data)] if isinstance(data, ast.Name) else [data]
    return any(
        isinstance(s, ast.List | ast.ListComp | ast.Tuple)
        or (isinstance(s, ast.Call) and (ctx.flow.qualname_of(s) or "").startswith("numpy."))
        for s in sources
    )


def _consumer(ctx: ModuleContext, call: ast.expr, hops: int = 0) -> ast.Call | None:
    """The loss or model call that receives the factory's tensor unmoved, if any: directly,
    through the name it is bound to, or through arithmetic that mixes it into another value
    (`points = points + torch.randn(points.shape) * 0.01`, then `model(points)`). Casts,
    reshapes, slices and joins keep the device, so the tensor is followed through them and
    the names they bind (Informer's `dec_inp = torch.zeros(...).float()`, then `dec_inp =
    torch.cat([y[:, :k], dec_inp], dim=1).float()`, then the model; DDIM's timesteps `t =
    torch.randint(...)`, `t = torch.cat([t, T - t - 1])[:n]`, then the loss)."""
    flow = ctx.flow
    node, parent = _same_device(ctx, call)
    if parent is None:
        return None  # moved on the way
    if isinstance(parent, ast.Call) and node in parent.args:
        return parent if _device_side(ctx, parent) else None
    if not isinstance(parent, ast.Assign) or len(parent.targets) != 1:
        return None
    target = parent.targets[0]
    if not isinstance(target, ast.Name):
        return None
    scope = ctx.enclosing_function(call)
    end = (parent.end_lineno or parent.lineno, parent.end_col_offset or 0)
    reads = [
        r
        for r in flow.reads_of(target.id)
        if ctx.enclosing_function(r) is scope
        and (r.lineno, r.col_offset) > end
        and flow.reaching(r) in (None, parent.value)  # not a later rebinding's reads
        # nor one a move may reach (`if cuda: x = x.cuda()`, then `net(x)`)
        and not any(_to_a_device(v) is not None for v in flow.reaching_or_all(r))
    ]
    if any(_moved(ctx, read) for read in reads):
        return None
    for read in reads:
        viewed, holder = _same_device(ctx, read)  # `model(buffer[:n].unsqueeze(1))`
        if isinstance(holder, ast.Call) and viewed in holder.args and _device_side(ctx, holder):
            return holder
        mixed = _mixed_with_model_output(ctx, read)
        if mixed is not None:
            return mixed
    for read in reads:
        returned = _returned_at(ctx, read)
        if returned is not None and scope is not None:
            return _consumer_at_call_sites(ctx, scope, returned)
    if hops < _MAX_HOPS:
        for read in reads:  # rebound through a cast, a slice or a join: follow the new name
            rebound, holder = _same_device(ctx, read)
            if rebound is not read and isinstance(holder, ast.Assign):
                found = _consumer(ctx, read, hops + 1)
                if found is not None:
                    return found
    return None


_MAX_HOPS = 3
_DEVICE_PARAMETER = re.compile(r"^(device|dev|.+_device)$")
_KEEPS_DEVICE = frozenset(
    {
        "float", "double", "half", "long", "int", "bool", "byte", "view", "reshape",
        "unsqueeze", "squeeze", "expand", "expand_as", "repeat", "permute", "transpose",
        "contiguous", "clone", "detach", "flatten", "t",
    }
)  # fmt: skip
_JOINS = frozenset({"torch.cat", "torch.stack", "torch.concat"})


def _same_device(ctx: ModuleContext, expr: ast.expr) -> tuple[ast.expr, ast.AST | None]:
    """How far `expr` travels while staying where it was made: arithmetic, casts and
    reshapes (`.float()`, `.view(...)`), slices (`t[:n]`), joins (`torch.cat([t, u])`) and
    the pre-0.4 `Variable(t)` wrapper.
    Returns the outermost such expression and its parent; the parent is None when the
    value is moved on the way (`.to(device)`, `.cuda()`)."""
    node: ast.expr = expr
    parent = ctx.parents.get(node)
    while True:
        if isinstance(parent, ast.BinOp | ast.UnaryOp) or (
            isinstance(parent, ast.Subscript) and parent.value is node
        ):
            node, parent = parent, ctx.parents.get(parent)
        elif isinstance(parent, ast.Attribute) and isinstance(ctx.parents.get(parent), ast.Call):
            if parent.attr in _MOVES:
                return node, None
            if parent.attr not in _KEEPS_DEVICE:
                return node, parent
            node = ctx.parents[parent]  # type: ignore[assignment]
            parent = ctx.parents.get(node)
        elif (
            isinstance(parent, ast.Call)
            and node in parent.args
            and ctx.flow.qualname_of(parent) in _WRAPPERS
        ):
            node, parent = parent, ctx.parents.get(parent)  # `h = Variable(h)`
        elif isinstance(parent, ast.List | ast.Tuple):
            join = ctx.parents.get(parent)
            if not (
                isinstance(join, ast.Call)
                and join.args
                and join.args[0] is parent
                and ctx.flow.qualname_of(join) in _JOINS
            ):
                return node, parent
            node, parent = join, ctx.parents.get(join)
        else:
            return node, parent


def _returned_at(ctx: ModuleContext, read: ast.Name) -> int | None:
    """-1 for `return name`, the position for `return a, name`; None when not returned."""
    holder = ctx.parents.get(read)
    if isinstance(holder, ast.Return):
        return -1
    if isinstance(holder, ast.Tuple) and isinstance(ctx.parents.get(holder), ast.Return):
        return holder.elts.index(read)
    return None


def _consumer_at_call_sites(
    ctx: ModuleContext, helper: ast.FunctionDef | ast.AsyncFunctionDef, position: int
) -> ast.Call | None:
    """The loss or model call that a caller of `helper` hands the returned tensor to unmoved
    (`h_t, l_t = self.reset()`, then `self.model(x, l_t, h_t)`): a recurrent model's initial
    state built on the CPU by a helper of the trainer."""
    for site in ctx.calls.call_sites(helper):
        assign = ctx.parents.get(site)
        if not (isinstance(assign, ast.Assign) and len(assign.targets) == 1):
            continue
        target = assign.targets[0]
        if position >= 0 and isinstance(target, ast.Tuple) and position < len(target.elts):
            target = target.elts[position]
        elif position >= 0:
            continue
        if not isinstance(target, ast.Name):
            continue
        caller = ctx.enclosing_function(site)
        reads = [
            r
            for r in ctx.flow.reads_of(target.id)
            if ctx.enclosing_function(r) is caller and r.lineno >= site.lineno
        ]
        if any(_moved(ctx, read) for read in reads):
            continue
        for read in reads:
            holder = ctx.parents.get(read)
            if isinstance(holder, ast.Call) and read in holder.args and _device_side(ctx, holder):
                return holder
    return None


def _mixed_with_model_output(ctx: ModuleContext, read: ast.Name) -> ast.Call | None:
    """The model call whose output the tensor meets in arithmetic (a hand-written label
    smoothing: `torch.sum(-smooth * torch.log_softmax(outputs, dim=1), dim=1)` with `outputs =
    net(images)`): the operation mixes a CPU tensor with a GPU one."""
    parent = ctx.parents.get(read)
    arithmetic: ast.expr | None = None
    while isinstance(parent, ast.BinOp | ast.UnaryOp):
        arithmetic, parent = parent, ctx.parents.get(parent)
    if arithmetic is None:
        return None
    flow = ctx.flow
    for sub in walk_tree(arithmetic):
        if isinstance(sub, ast.Call) and flow.is_model_call(sub):
            return sub
        if isinstance(sub, ast.Name) and sub is not read:
            producer = next((p for p in flow.producers(sub) if flow.is_model_call(p)), None)
            if producer is not None:
                return producer
    return None


def _moved(ctx: ModuleContext, read: ast.Name) -> bool:
    """`z.cuda()`, `z.to(device)`, or through the legacy wrapper: `Variable(z).cuda()`."""
    node: ast.expr = read
    holder = ctx.parents.get(read)
    while (
        isinstance(holder, ast.Call)
        and node in holder.args
        and ctx.flow.qualname_of(holder) in _WRAPPERS
    ):
        node, holder = holder, ctx.parents.get(holder)
    return isinstance(holder, ast.Attribute) and holder.attr in _MOVES


def _device_side(ctx: ModuleContext, call: ast.Call) -> bool:
    """A loss, a model, or `torch.autograd.grad` (its `grad_outputs` must sit on the
    outputs' device: a gradient penalty's `torch.ones(n, 1)` fails on the GPU)."""
    flow = ctx.flow
    return (
        flow.is_loss_callee(call.func)
        or flow.is_model_call(call)
        or flow.qualname_of(call) in _AUTOGRAD_GRAD
        or _placed_model(ctx, call)
    )


def _placed_model(ctx: ModuleContext, call: ast.Call) -> bool:
    """`call` runs a model this code put on a device itself, wherever the call is (an
    agent's `act`, an evaluation's sampling loop): `self.actor(obs)` with `self.actor =
    make_actor(cfg).to(self.device)` in the class, `net(x)` with `net.cuda()` or `net =
    Net().to(device)` in the module, or a helper's parameter every call of this module gives
    such a model (`evaluate(sampler, model)` called with `net_sampler`, built
    `.to(device)`). A tensor made on the CPU does not reach it unmoved."""
    names, attributes = _placements(ctx)
    func = call.func
    if ctx.flow.is_loss_callee(func) or ctx.test_module:
        return False  # a loss moved with its module (CTC takes its lengths on the host); tests
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        if func.value.id != "self":
            return False
        owner = next((a for a in ctx.ancestors(call) if isinstance(a, ast.ClassDef)), None)
        return owner is not None and (id(owner), func.attr) in attributes
    if not isinstance(func, ast.Name):
        return False
    function = ctx.enclosing_function(call)
    parameters = [a.arg for a in function.args.args] if function is not None else []
    if func.id in parameters:
        if parameters[0] in ("self", "cls") or _rebound(function, func.id):  # type: ignore[arg-type]
            return False
        position = parameters.index(func.id)
        sites = ctx.calls.call_sites(function)  # type: ignore[arg-type]
        return bool(sites) and all(
            position < len(site.args)
            and isinstance(site.args[position], ast.Name)
            and site.args[position].id in names  # type: ignore[attr-defined]
            for site in sites
        )
    return func.id in names


def _rebound(function: ast.AST, name: str) -> bool:
    return any(
        isinstance(n, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == name for t in n.targets)
        for n in ast.walk(function)
    )


def _to_a_device(call: ast.AST) -> ast.expr | None:
    """What `x.cuda()` / `x.to(device)` moves (`x`); None for anything else, or a move to
    the CPU (`x.to("cpu")`, `x.to(torch.device("cpu"))`)."""
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)):
        return None
    if call.func.attr == "cuda":
        return call.func.value
    if call.func.attr != "to" or not call.args:
        return None
    target = call.args[0]
    if isinstance(target, ast.Constant) and target.value == "cpu":
        return None
    if isinstance(target, ast.Call) and any(
        isinstance(a, ast.Constant) and a.value == "cpu" for a in target.args
    ):
        return None
    return call.func.value


def _cpu_only(ctx: ModuleContext, move: ast.expr) -> bool:
    """`m.to(device)` where every binding of `device` is the CPU (`device =
    torch.device("cpu")`)."""
    assert isinstance(move, ast.Call)
    if not move.args or not isinstance(move.args[0], ast.Name):
        return False
    values = ctx.flow.definitions(move.args[0])
    return bool(values) and all(
        (isinstance(v, ast.Constant) and v.value == "cpu")
        or (
            isinstance(v, ast.Call)
            and bool(v.args)
            and isinstance(v.args[0], ast.Constant)
            and v.args[0].value == "cpu"
        )
        for v in values
    )


def _placements(ctx: ModuleContext) -> tuple[frozenset[str], frozenset[tuple[int, str]]]:
    """The names (anywhere in the module) and the `self` attributes (per class) that the
    module moves to a device: `m.cuda()` / `m.to(device)` as a statement, or `m =
    <...>.to(device)` bound to them."""
    memo = ctx.memo_table("factory_without_device_in_step.placements")
    if 0 in memo:
        return memo[0]  # type: ignore[no-any-return]
    names: set[str] = set()
    attributes: set[tuple[int, str]] = set()
    if ".cuda()" in ctx.source or ".to(" in ctx.source:
        # the statements around the module's `.cuda()`/`.to()` calls (the call index), not
        # a walk of the whole tree
        statements = [
            parent
            for call in ctx.flow.calls_named(("cuda", "to"))
            if isinstance(parent := ctx.parents.get(call), ast.Expr | ast.Assign)
            and parent.value is call
        ]
        for node in statements:
            moved: list[ast.expr] = []
            if isinstance(node, ast.Expr) and (target := _to_a_device(node.value)) is not None:
                moved = [] if _cpu_only(ctx, node.value) else [target]
            elif isinstance(node, ast.Assign) and _to_a_device(node.value) is not None:
                moved = [] if _cpu_only(ctx, node.value) else list(node.targets)
            for target in moved:
                if isinstance(target, ast.Name):
                    names.add(target.id)
                elif (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id == "self"
                ):
                    owner = next(
                        (a for a in ctx.ancestors(node) if isinstance(a, ast.ClassDef)), None
                    )
                    if owner is not None:
                        attributes.add((id(owner), target.attr))
    memo[0] = found = (frozenset(names), frozenset(attributes))
    return found


def _places_batches(ctx: ModuleContext, call: ast.Call) -> bool:
    """The step moves its data to the device itself (`x.to(device)`, `y.cuda()`), or its
    function is handed the device to use (`def train(args, model, device, graphs, ...)`):
    device placement is this code's job, not the model's (a pipeline shard that moves its
    inputs)."""
    function = ctx.enclosing_function(call)
    if function is not None and any(
        _DEVICE_PARAMETER.match(a.arg) for a in [*function.args.args, *function.args.kwonlyargs]
    ):
        return True
    loop = ctx.loops.loop_containing(call)
    owner = loop.node if loop is not None else ctx.enclosing_function(call)
    body = getattr(owner, "body", [])
    return any(
        isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and (n.func.attr in ("to", "cuda") or (n.func.attr == "type" and _cuda_type(ctx, n)))
        and not ctx.flow.is_module_value(n.func.value)
        for n in walk_scope(body)
    )


def _cuda_type(ctx: ModuleContext, call: ast.Call) -> bool:
    """`imgs.type(Tensor)` with `Tensor = torch.cuda.FloatTensor if cuda else ...`: the
    pre-0.4 way of moving a batch to the GPU."""
    if len(call.args) != 1:
        return False
    arg = call.args[0]
    sources = [arg, *ctx.flow.sources(arg)] if isinstance(arg, ast.Name) else [arg]
    return any(
        (ctx.qualname(n) or "").startswith("torch.cuda.")
        for source in sources
        for n in ast.walk(source)
        if isinstance(n, ast.Attribute)
    )


def _bound_name(ctx: ModuleContext, call: ast.Call) -> str:
    parent = ctx.parents.get(call)
    if isinstance(parent, ast.Assign) and isinstance(parent.targets[0], ast.Name):
        return parent.targets[0].id
    return ""
