"""Patterns several codemods look for: training loops, models, DataLoaders, optimizers."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.checks.patterns import ACCELERATOR_USE
from torchdoctor.agent.fixes.codemods.base import (
    SourceContext,
    descendants,
    dotted_name,
    method_call,
)
from torchdoctor.agent.fixes.models import FixTarget, SmokeRun

Loop = cst.For | cst.While
SIGMOIDS = ("torch.sigmoid", "torch.nn.functional.sigmoid")
_SCHEDULER_HINTS = ("sched", "lr_", "warmup", "plateau")
_NOT_MODELS = {
    "DataLoader",
    "Dataset",
    "TensorDataset",
    "Generator",
    "Tensor",
    "Path",
    "ArgumentParser",
    "SummaryWriter",
    "GradScaler",
    "Adam",
    "AdamW",
    "SGD",
    "RMSprop",
    "Adagrad",
    "LBFGS",
    "CrossEntropyLoss",
    "MSELoss",
    "BCELoss",
    "BCEWithLogitsLoss",
    "NLLLoss",
    "L1Loss",
}
NO_GRAD_CONTEXTS = ("no_grad", "inference_mode")


def target_spans(target: FixTarget) -> list[tuple[int, int]]:
    """The flagged lines, then those of each place in the same file the finding names as
    `related` (a rule reported once per project lists its other places: a second loader, a
    GAN's second optimizer); a fix of the finding must fix them all, or the rule still fires."""
    spans = [(target.line, target.end_line)]
    for place in target.data.get("related", []):
        if isinstance(place, dict) and place.get("file") == target.file:
            line = int(place["line"])
            spans.append((line, int(place.get("end_line") or line)))
    return spans


def is_scheduler(name: str) -> bool:
    lowered = name.lower()
    return any(hint in lowered for hint in _SCHEDULER_HINTS)


def trains(ctx: SourceContext, node: cst.CSTNode) -> bool:
    """Whether `backward()` and an optimizer `step()` are both called directly under `node`."""
    calls = ctx.find(cst.Call, inside=node)
    backward = any(method_call(c, "backward") for c in calls)
    return backward and bool(optimizer_steps(ctx, node))


def optimizer_steps(ctx: SourceContext, node: cst.CSTNode) -> list[cst.Call]:
    steps = []
    for call in ctx.find(cst.Call, inside=node):
        if method_call(call, "step") and isinstance(call.func, cst.Attribute):
            receiver = dotted_name(call.func.value) or ""
            if receiver and not is_scheduler(receiver.split(".")[-1]):
                steps.append(call)
    return steps


def training_loops(ctx: SourceContext) -> list[Loop]:
    """Innermost for/while loops whose body calls backward() and step()."""
    loops = [n for n in ctx.find(cst.For) + ctx.find(cst.While) if trains(ctx, n.body)]
    return [
        loop
        for loop in loops
        if not any(other is not loop and loop_contains(ctx, loop, other) for other in loops)
    ]


def loop_contains(ctx: SourceContext, outer: cst.CSTNode, inner: cst.CSTNode) -> bool:
    return any(anc is outer for anc in ctx.ancestors(inner))


def flagged_loop(ctx: SourceContext, target: FixTarget) -> Loop | None:
    """The training loop a finding points at: starting on its line, else overlapping it."""
    loops = training_loops(ctx)
    for loop in loops:
        if ctx.line(loop) == target.line:
            return loop
    overlapping = [
        loop
        for loop in loops
        if ctx.line(loop) <= target.end_line and ctx.end_line(loop) >= target.line
    ]
    if len(overlapping) == 1:
        return overlapping[0]
    return loops[0] if len(loops) == 1 else None


def iteration_loop(ctx: SourceContext, loop: Loop) -> Loop:
    """The loop whose one iteration is the whole training step around `loop`: an enclosing
    loop of the same function that runs another backward pass beside it (seungwonpark/melgan
    steps the generator, then its discriminator `rep_discriminator` times in an inner loop;
    the rule points at the inner one). `loop` itself when there is none."""
    inner = {id(node) for node in descendants(loop)}
    found = loop
    for anc in ctx.ancestors(loop):
        if isinstance(anc, cst.FunctionDef | cst.ClassDef):
            break
        if isinstance(anc, cst.For | cst.While) and any(
            id(call) not in inner and method_call(call, "backward") is not None
            for call in ctx.find(cst.Call, inside=anc)
        ):
            found = anc
            break
    return found


def enclosing_loop(ctx: SourceContext, node: cst.CSTNode) -> Loop | None:
    for anc in ctx.ancestors(node):
        if isinstance(anc, cst.For | cst.While):
            return anc
        if isinstance(anc, cst.FunctionDef | cst.ClassDef):
            return None
    return None


def under_no_grad(ctx: SourceContext, node: cst.CSTNode) -> bool:
    """Inside `with torch.no_grad()`/`inference_mode()` or a function decorated with either."""
    for anc in ctx.ancestors(node):
        if isinstance(anc, cst.With) and any(is_no_grad(ctx, item.item) for item in anc.items):
            return True
        if isinstance(anc, cst.FunctionDef) and any(
            is_no_grad(ctx, d.decorator) for d in anc.decorators
        ):
            return True
    return False


def is_no_grad(ctx: SourceContext, expr: cst.BaseExpression) -> bool:
    func = expr.func if isinstance(expr, cst.Call) else expr
    name = ctx.qualname(func) or dotted_name(func) or ""
    return name.split(".")[-1] in NO_GRAD_CONTEXTS


def is_dataloader(ctx: SourceContext, call: cst.Call) -> bool:
    name = ctx.qualname(call.func) or dotted_name(call.func) or ""
    return name.split(".")[-1] == "DataLoader"


def model_names(ctx: SourceContext) -> set[str]:
    """Names bound to something built by a class call (`Net(...)`, `nn.Sequential(...)`,
    `Net().to(device)`), or to a torchvision/timm-style factory."""
    names: set[str] = set()
    classes = {c.name.value for c in ctx.find(cst.ClassDef)}  # `G = generator(128)` (DCGAN)
    for assign in ctx.find(cst.Assign):
        value = assign.value
        moved = False  # `Net().to(device)`: only modules and tensors move
        while (
            isinstance(value, cst.Call)
            and isinstance(value.func, cst.Attribute)
            and value.func.attr.value in ("to", "cuda", "train", "float", "half", "bfloat16")
        ):
            value = value.func.value
            moved = True
        if not isinstance(value, cst.Call):
            continue
        callee = dotted_name(value.func) or ""
        last = callee.split(".")[-1]
        qual = ctx.qualname(value.func) or ""
        built = (
            (last[:1].isupper() and last not in _NOT_MODELS)
            or (last == "Generator" and not qual.startswith("torch."))  # a GAN's, not an RNG
            or callee in classes
            or qual.startswith(("torchvision.models.", "timm."))
        )
        if not built:
            continue
        vouched = moved or callee in classes or qual.startswith(("torch.", "torchvision.", "timm."))
        for target in assign.targets:
            name = dotted_name(target.target)
            if name and (vouched or _used_as_module(ctx, name)):
                names.add(name)
    return names


_MODULE_METHODS = frozenset(
    {"parameters", "named_parameters", "train", "eval", "to", "cuda", "state_dict",
     "load_state_dict", "modules", "named_modules", "children", "apply", "half", "float",
     "bfloat16", "zero_grad", "requires_grad_", "buffers", "register_buffer"}
)  # fmt: skip


def _used_as_module(ctx: SourceContext, name: str) -> bool:
    """The module treats `name` as an `nn.Module`: runs a method only modules have on it, or
    wraps it (DDP, DataParallel). An instance of a class imported from elsewhere is not known
    to be one otherwise (a speech trainer's `self.metric = CharacterErrorRate(vocab)`, called
    in the loop beside the model, is a plain object: `.compile()` on it raises)."""
    for call in ctx.find(cst.Call):
        func = call.func
        if (
            isinstance(func, cst.Attribute)
            and func.attr.value in _MODULE_METHODS
            and dotted_name(func.value) == name
        ):
            return True
        callee = (ctx.qualname(func) or dotted_name(func) or "").split(".")[-1]
        if callee in WRAPPERS and any(dotted_name(a.value) == name for a in call.args):
            return True
    return False


def model_called_in(ctx: SourceContext, scope: cst.CSTNode, hint: str | None) -> str | None:
    """The one model called under `scope`: the finding's hint, else a model-built name, else a
    callee named like a model (`model`, `net`, `self.encoder_model`)."""
    called = [dotted_name(c.func) for c in ctx.find(cst.Call, inside=scope)]
    names = [n for n in called if n]
    if hint:
        return hint if hint in names else None
    built = model_names(ctx)
    candidates = {n for n in names if n in built and not _names_a_loss(n)}
    if not candidates:
        functions = defined_functions(ctx)
        candidates = {
            n
            for n in names
            if ctx.qualname(cst.parse_expression(n)) is None
            and named_like_model(n)
            and n not in functions
        }
    return candidates.pop() if len(candidates) == 1 else None


WRAPPERS = frozenset(
    {"DistributedDataParallel", "DDP", "DataParallel", "FullyShardedDataParallel", "FSDP"}
)


def is_wrapped(ctx: SourceContext, model: str) -> bool:
    """`model` is bound to a DDP/DataParallel/FSDP wrapper somewhere in the module."""
    if model.endswith(".module"):
        return True
    for assign in ctx.find(cst.Assign):
        value = assign.value
        while method_call(value, "to") or method_call(value, "cuda"):  # DDP(model).to(device)
            assert isinstance(value, cst.Call) and isinstance(value.func, cst.Attribute)
            value = value.func.value
        if not isinstance(value, cst.Call):
            continue
        callee = ctx.qualname(value.func) or dotted_name(value.func) or ""
        if callee.split(".")[-1] not in WRAPPERS:
            continue
        if any(dotted_name(t.target) == model for t in assign.targets):
            return True
    return False


def models_called_in(ctx: SourceContext, scope: cst.CSTNode, hint: str | None) -> list[str]:
    """The model called under `scope`, else every model the module builds that is called
    there (a GAN's generator and discriminator)."""
    model = model_called_in(ctx, scope, hint)
    if model is not None:
        return [model]
    if hint:
        return []
    called = {dotted_name(c.func) for c in ctx.find(cst.Call, inside=scope)}
    return sorted(n for n in model_names(ctx) if n in called and not _names_a_loss(n))


def _names_a_loss(name: str) -> bool:
    """`criterion`, `loss_fn`: built by a class call like a model (Swin's
    `SoftTargetCrossEntropy()`), but a loss."""
    last = name.split(".")[-1].lower()
    return "loss" in last or "criterion" in last


def defined_functions(ctx: SourceContext) -> set[str]:
    """Names the module binds with `def`: DALL-E's `save_model(path, epoch)`, called in its
    training loop, is named like a model but has no `.compile()`; a class's methods also as
    `self.<name>` (JointBERT's trainer calls `self.save_model()` beside `self.model(...)`)."""
    names = set()
    for function in ctx.find(cst.FunctionDef):
        names.add(function.name.value)
        block = ctx.parent(function)
        if block is not None and isinstance(ctx.parent(block), cst.ClassDef):
            names.add(f"self.{function.name.value}")
    return names


def dataset_on_device(ctx: SourceContext) -> bool:
    """A dataset class of this module hands out GPU tensors: its `__getitem__` (or
    `__iter__`) calls `.cuda()` or `.to(device)` (x-transformers' `TextSamplerDataset`
    returns `full_seq.cuda()`). Loader workers cannot initialise CUDA in a forked process,
    and only CPU tensors can be pinned."""
    for method in ctx.find(cst.FunctionDef):
        if method.name.value not in ("__getitem__", "__iter__", "__next__"):
            continue
        for call in ctx.find(cst.Call, inside=method):
            if method_call(call, "cuda") is not None:
                return True
            moved = method_call(call, "to")
            if moved is not None and any(_names_a_device(arg) for arg in moved.args):
                return True
    return False


def _names_a_device(arg: cst.Arg) -> bool:
    if arg.keyword is not None and arg.keyword.value == "device":
        return True
    text = cst.Module([]).code_for_node(arg.value).lower()
    return "cuda" in text or "device" in text


def named_like_model(name: str) -> bool:
    """`model`, `net`, `self.encoder_model`: the last part of a dotted name says model."""
    return any(k in name.split(".")[-1].lower() for k in ("model", "net"))


def mentions_cuda(ctx: SourceContext) -> bool:
    """CUDA by name, or the device-generic `torch.accelerator` API that targets it."""
    return "cuda" in ctx.source or ACCELERATOR_USE in ctx.source


def probe_symptom_gone(
    probe_rule: str, symptom: str, before: SmokeRun, after: SmokeRun
) -> tuple[bool, str]:
    """For fixes of what a multi-rank run proves: the probe rule fired on the original run
    and no longer fires on the fixed one."""
    was = probe_rule in before.signals.distributed_findings
    still = probe_rule in after.signals.distributed_findings
    if not was:
        return False, f"the original run did not show it ({probe_rule} did not fire)"
    if still:
        return False, f"{symptom} in the fixed run too"
    return True, f"{symptom} before the fix; not after"


def sigmoid_input(ctx: SourceContext, expr: cst.BaseExpression) -> cst.BaseExpression | None:
    """`z` in `torch.sigmoid(z)`, `F.sigmoid(z)` and `z.sigmoid()`; None for anything else."""
    if not isinstance(expr, cst.Call):
        return None
    if ctx.qualname(expr.func) in SIGMOIDS and len(expr.args) == 1:
        return expr.args[0].value
    if isinstance(expr.func, cst.Attribute) and expr.func.attr.value == "sigmoid" and not expr.args:
        return expr.func.value
    return None


def drop_sigmoid(ctx: SourceContext, call: cst.Call) -> None:
    """A loss call's first argument without the sigmoid written around it."""
    first = call.args[0].value
    inner = sigmoid_input(ctx, first)
    if inner is not None:
        ctx.substitute(first, inner)


def indexes_first(index: cst.Subscript) -> bool:
    """`x[0]`: one plain index, the literal 0."""
    element = index.slice[0].slice if len(index.slice) == 1 else None
    return (
        isinstance(element, cst.Index)
        and isinstance(element.value, cst.Integer)
        and element.value.value == "0"
    )


def ancestors_below(ctx: SourceContext, node: cst.CSTNode, stop: cst.CSTNode) -> list[cst.CSTNode]:
    """`node`'s ancestors, innermost first, up to (not including) `stop`."""
    found = []
    for ancestor in ctx.ancestors(node):
        if ancestor is stop:
            break
        found.append(ancestor)
    return found
