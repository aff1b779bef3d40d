"""factory-joined-with-device-tensor: `torch.cat`/`torch.stack` joins a tensor placed on a
device with one a factory just made on the CPU."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.vocabulary import TENSOR_FACTORIES
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import kwarg
from torchdoctor.agent.checks.device_scope import touches_accelerator
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_JOINS = frozenset(
    f"torch.{name}" for name in ("cat", "concat", "concatenate", "stack", "hstack", "vstack")
)
_FACTORIES = TENSOR_FACTORIES | {"torch.tensor", "torch.from_numpy"}
# Methods that keep a tensor where it is (a factory's result reshaped or cast stays on the CPU).
_KEEPS_DEVICE = frozenset(
    {"view", "reshape", "unsqueeze", "squeeze", "expand", "repeat", "float", "long", "int",
     "double", "bool", "fill_", "zero_", "t", "transpose", "permute", "flatten"}
)  # fmt: skip


class FactoryJoinedWithDeviceTensor(Rule):
    """Detects `torch.cat`/`torch.stack` (and `hstack`/`vstack`/`concat`) given, in one list,
    a tensor the same function placed on a device (made with `device=device`, or moved with
    `.to(device)`/`.cuda()`, directly or through the names it is bound to) and a tensor a
    factory makes right there without `device=` (`torch.zeros(1, act_dim)`,
    `torch.tensor([...])`, `torch.from_numpy(a)`), in any function: a rollout or decoding
    loop that grows a history one step at a time (`actions = torch.cat([actions,
    torch.zeros((1, act_dim))])`, Decision Transformer's evaluation with its `device=`
    gone).

    Why it matters: the factory's tensor is on the CPU; `torch.cat` refuses tensors on two
    devices ("Expected all tensors to be on the same device"), so the run fails on a GPU,
    typically in evaluation, after training has spent its hours, while a CPU test passes.

    Not reported: a factory given `device=` (also `device=x.device`), or moved in the list
    itself (`torch.zeros(n).to(device)`), `*_like` factories, a partner placed on the CPU
    by name (`device="cpu"`), modules that never mention a device or CUDA, and the
    `forward` of a module (device-mismatch-factory-in-forward reports factories there).

    Example:
        actions = torch.zeros((0, act_dim), device=device)
        for t in range(max_ep_len):
            actions = torch.cat([actions, torch.zeros((1, act_dim))], dim=0)

    Fix: make it on the partner's device: `torch.zeros((1, act_dim), device=device)` (or
    `actions.new_zeros((1, act_dim))`).
    """

    id = "factory-joined-with-device-tensor"
    point = 1
    severity = Severity.HIGH
    title = "CPU tensor joined with a device tensor"
    items: ClassVar[tuple[str, ...]] = ("1.3",)
    triggers = Triggers(all_of=(("cat(", "stack(", "concat"), ("device", "cuda")))

    def applies(self, ctx: ModuleContext) -> bool:
        return self.triggers.found_in(ctx.source) and touches_accelerator(ctx.source)

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        flow = ctx.flow
        for join in flow.calls_to(_JOINS):
            parts = join.args[0] if join.args else kwarg(join, "tensors")
            if not isinstance(parts, ast.List | ast.Tuple) or _in_forward(ctx, join):
                continue
            made = [f for f in map(lambda e: _cpu_factory(ctx, e), parts.elts) if f is not None]
            if not made:
                continue
            placed = next((p for e in parts.elts if (p := _placement(ctx, e)) is not None), None)
            if placed is None:
                continue
            factory = made[0]
            ctx.report(
                self,
                factory,
                f"`{ast.unparse(join.func)}` joins `{ast.unparse(factory)}`, made on the CPU, "
                f"with a tensor placed on a device (`{ast.unparse(placed)}`, line "
                f"{placed.lineno}): on a GPU the join fails (Expected all tensors to be on "
                "the same device)",
                data={"placed_line": placed.lineno},
            )


def _cpu_factory(ctx: ModuleContext, element: ast.expr) -> ast.Call | None:
    """The factory call `element` is, seen through device-keeping methods
    (`torch.zeros(n).long()`), when it names no device."""
    node = element
    while (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in _KEEPS_DEVICE
    ):
        node = node.func.value
    if not isinstance(node, ast.Call) or ctx.flow.qualname_of(node) not in _FACTORIES:
        return None
    return node if kwarg(node, "device") is None else None


def _placement(ctx: ModuleContext, element: ast.expr) -> ast.Call | None:
    """The call that put `element` (or a value it is bound to) on a device: a factory given
    a device that is not the CPU's, or a `.to(device)`/`.cuda()`."""
    if isinstance(element, ast.Starred):
        return None
    for source in ctx.flow.sources(element):
        if not isinstance(source, ast.Call):
            continue
        call: ast.expr = source
        while isinstance(call, ast.Call):
            if ctx.flow.qualname_of(call) in _FACTORIES:
                device = kwarg(call, "device")
                if device is not None and not _names_the_cpu(device):
                    return call
                break
            if not isinstance(call.func, ast.Attribute):
                break
            if _moves_to_a_device(call):
                return call
            call = call.func.value
    return None


def _moves_to_a_device(call: ast.Call) -> bool:
    """`.cuda()`, `.to(device)`, `.to(device=d)`, `.to(x.device)`, `.to("cuda")`; not
    `.to(dtype=...)`, `.to(torch.float32)` or `.to("cpu")`."""
    assert isinstance(call.func, ast.Attribute)
    if call.func.attr == "cuda":
        return True
    if call.func.attr != "to":
        return False
    target = kwarg(call, "device") or (call.args[0] if call.args else None)
    if target is None or _names_the_cpu(target):
        return False
    text = ast.unparse(target)
    return "device" in text or "cuda" in text or text in ("dev", "gpu")


def _names_the_cpu(value: ast.expr) -> bool:
    text = ast.unparse(value).replace('"', "'")
    return text in ("'cpu'", "torch.device('cpu')")


def _in_forward(ctx: ModuleContext, node: ast.AST) -> bool:
    fn = ctx.enclosing_function(node)
    return fn is not None and fn.name == "forward"
