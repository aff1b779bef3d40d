"""attention-heads-one-by-one: multi-head attention run as a Python loop over head modules."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import self_attribute
from torchdoctor.agent.models import Severity

_SOFTMAX = frozenset({"softmax", "Softmax"})
_MATMUL = frozenset({"matmul", "bmm", "einsum"})


class AttentionHeadsOneByOne(Rule):
    """Detects multi-head attention whose heads are separate modules run one after the other
    and concatenated: `torch.cat([h(x) for h in self.heads], dim=-1)` (or a loop appending
    each head's output), where `self.heads` is an `nn.ModuleList` of one local class, built
    in a comprehension, whose `forward` computes attention (a softmax and a matrix product).
    The shape of the nanoGPT lecture and of many from-scratch transformers.

    Why it matters: each head runs its own key, query and value projections, score product,
    mask, softmax and dropout as separate small kernels, so a step launches H times as many
    kernels as one batched attention, and at the small head sizes these models use the GPU
    mostly waits for launches (a 6-layer, 6-head model of this shape: bf16 autocast made its
    step no faster on an H100, `torch.compile` made it 38% faster). One projection to all
    heads, viewed as (batch, heads, tokens, head size), and one
    `F.scaled_dot_product_attention` call compute every head at once.

    Not reported: modules applied in sequence (`for block in self.blocks: x = block(x)`),
    branches that compute no attention (Inception's convolutions), an ensemble stacked and
    averaged, heads each fed their own input (`zip(self.heads, xs)`), a list of different
    classes, or a head class of another file.

    Example:
        self.heads = nn.ModuleList([Head(head_size) for _ in range(num_heads)])
        ...
        out = torch.cat([h(x) for h in self.heads], dim=-1)

    Fix: one `nn.Linear(n_embd, 3 * n_embd)` for the keys, queries and values of all heads,
    reshaped to (B, H, T, head size), one `F.scaled_dot_product_attention(q, k, v,
    is_causal=True)`, the heads moved back to (B, T, n_embd) — nanoGPT's
    `CausalSelfAttention`. The parameters change shape (checkpoints need converting), so it
    is left to a person; `torch.compile(model)` recovers much of the gap meanwhile.
    """

    id = "attention-heads-one-by-one"
    point = 6
    severity = Severity.LOW
    title = "Attention heads computed one module at a time"
    items: ClassVar[tuple[str, ...]] = ("6.2",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = frozenset({"cat"})
    triggers = Triggers(("ModuleList",))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if ctx.call_qualname(node) != "torch.cat" or not node.args:
            return
        attribute = _heads_iterated(ctx, node, node.args[0])
        if attribute is None:
            return
        owner = next((a for a in ctx.ancestors(node) if isinstance(a, ast.ClassDef)), None)
        if owner is None:
            return
        head_class = _head_class(ctx, owner, attribute)
        if head_class is None or not _computes_attention(ctx.flow.classes[head_class]):
            return
        ctx.report(
            self,
            node,
            f"the heads of `self.{attribute}` ({head_class}) run one module at a time and are "
            "concatenated: each head's projections, scores and softmax are separate small "
            "kernels, H times the launches of one batched attention; project all heads at once "
            "and call F.scaled_dot_product_attention on (batch, heads, tokens, head size)",
            data={"heads": attribute, "head_class": head_class},
        )


def _heads_iterated(ctx: ModuleContext, call: ast.Call, first: ast.expr) -> str | None:
    """`self.NAME` when `first` is `[h(...) for h in self.NAME]` (a list or a generator), or a
    name bound to an empty list that a loop `for h in self.NAME:` appends `h(...)` to."""
    if isinstance(first, ast.ListComp | ast.GeneratorExp) and len(first.generators) == 1:
        generator = first.generators[0]
        if _calls_loop_variable(first.elt, generator.target) and not generator.ifs:
            return self_attribute(generator.iter)
        return None
    if not isinstance(first, ast.Name):
        return None
    function = ctx.enclosing_function(call)
    if function is None:
        return None
    for loop in walk_tree(function):
        if not isinstance(loop, ast.For) or self_attribute(loop.iter) is None:
            continue
        for stmt in loop.body:
            appended = _appended_to(stmt, first.id)
            if appended is not None and _calls_loop_variable(appended, loop.target):
                return self_attribute(loop.iter)
    return None


def _appended_to(stmt: ast.stmt, name: str) -> ast.expr | None:
    """The value of `name.append(value)` when `stmt` is that call."""
    if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)):
        return None
    call = stmt.value
    if (
        isinstance(call.func, ast.Attribute)
        and call.func.attr == "append"
        and isinstance(call.func.value, ast.Name)
        and call.func.value.id == name
        and len(call.args) == 1
    ):
        return call.args[0]
    return None


def _calls_loop_variable(expr: ast.expr, target: ast.expr) -> bool:
    return (
        isinstance(expr, ast.Call)
        and isinstance(expr.func, ast.Name)
        and isinstance(target, ast.Name)
        and expr.func.id == target.id
    )


def _head_class(ctx: ModuleContext, owner: ast.ClassDef, attribute: str) -> str | None:
    """The local module class that `owner.__init__` repeats in `self.ATTRIBUTE =
    nn.ModuleList([C(...) for _ in range(n)])` (a generator works too)."""
    for stmt in owner.body:
        if not (isinstance(stmt, ast.FunctionDef) and stmt.name == "__init__"):
            continue
        for node in walk_tree(stmt):
            if not (
                isinstance(node, ast.Assign)
                and any(self_attribute(t) == attribute for t in node.targets)
                and isinstance(node.value, ast.Call)
                and (ctx.call_qualname(node.value) or "").endswith("nn.ModuleList")
                and len(node.value.args) == 1
            ):
                continue
            built = node.value.args[0]
            if not isinstance(built, ast.ListComp | ast.GeneratorExp):
                return None
            element = built.elt
            if (
                isinstance(element, ast.Call)
                and isinstance(element.func, ast.Name)
                and element.func.id in ctx.flow.module_classes
                and _repeats(built.generators)
            ):
                return element.func.id
            return None
    return None


def _repeats(generators: list[ast.comprehension]) -> bool:
    """`for _ in range(n)`: the same module built n times."""
    return (
        len(generators) == 1
        and isinstance(generators[0].iter, ast.Call)
        and isinstance(generators[0].iter.func, ast.Name)
        and generators[0].iter.func.id == "range"
    )


def _computes_attention(cls: ast.ClassDef) -> bool:
    """The class's `forward` takes a softmax and a matrix product: an attention head."""
    forward = next(
        (s for s in cls.body if isinstance(s, ast.FunctionDef) and s.name == "forward"), None
    )
    if forward is None:
        return False
    softmax = matmul = False
    for node in walk_tree(forward):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
            matmul = True
        elif isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else None
            softmax |= name in _SOFTMAX
            matmul |= name in _MATMUL
    return softmax and matmul
