"""manual-attention: attention written as softmax(q @ k^T) @ v instead of the fused kernel."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_scope
from torchdoctor.agent.models import Severity

_SOFTMAX = frozenset({"torch.softmax", "torch.nn.functional.softmax", "torch.special.softmax"})


def _is_key_transpose(node: ast.AST) -> bool:
    """`k.transpose(-2, -1)`, `k.transpose(-1, -2)` or `k.mT`."""
    if isinstance(node, ast.Attribute) and node.attr == "mT":
        return True
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return False
    if node.func.attr != "transpose" or len(node.args) != 2:
        return False
    dims = set()
    for arg in node.args:
        if isinstance(arg, ast.UnaryOp) and isinstance(arg.op, ast.USub):
            arg = arg.operand
            if isinstance(arg, ast.Constant) and isinstance(arg.value, int):
                dims.add(-arg.value)
    return dims == {-2, -1}


def _is_scores(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.MatMult)
        and _is_key_transpose(node.right)
    )


class ManualAttention(Rule):
    """Detects attention computed by hand: a softmax over `q @ k.transpose(-2, -1)` (scaled,
    usually masked) whose probabilities are multiplied by the values (`probs @ v`).

    Why it matters: the hand-written form materialises the T x T score matrix in memory,
    launches several kernels (matmul, scale, mask, softmax, dropout, matmul) and cannot use the
    flash or memory-efficient kernels; `F.scaled_dot_product_attention` computes the same result
    in one fused kernel, several times faster on recent GPUs and with memory linear in T.
    Attention whose weights are returned or reused is not reported (the fused kernel does not
    give them back).

    Example:
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
        att = att.masked_fill(mask == 0, float("-inf"))
        y = F.softmax(att, dim=-1) @ v

    Fix: `y = F.scaled_dot_product_attention(q, k, v, is_causal=True)` (or `attn_mask=`), which
    `torchdoctor audit --fix` proposes for the causal case and verifies on a run.
    """

    id = "manual-attention"
    point = 6
    severity = Severity.LOW
    title = "Hand-written attention instead of scaled_dot_product_attention"
    items: ClassVar[tuple[str, ...]] = ("6.2",)
    fixable = True

    def applies(self, ctx: ModuleContext) -> bool:
        return "softmax" in ctx.source and "@" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        if "softmax" not in ctx.source or "@" not in ctx.source:
            return
        for fn in ctx.loops.functions.values():
            for function in fn:
                self._check_function(ctx, function)

    def _check_function(self, ctx: ModuleContext, function: ast.AST) -> None:
        body = function.body if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef) else []
        nodes = list(walk_scope(body))
        for node in nodes:
            if not isinstance(node, ast.Call) or not self._is_softmax(ctx, node):
                continue
            source = node.args[0] if node.args else getattr(node.func, "value", None)
            if source is None or not ctx.flow.derives_from(source, _is_scores):
                continue
            if self._feeds_value_product(ctx, node, nodes) and not self._weights_escape(
                ctx, node, nodes
            ):
                ctx.report(
                    self,
                    node,
                    "attention computed by hand (softmax over q @ k^T, then @ v): one fused "
                    "scaled_dot_product_attention call is faster and never stores the T x T "
                    "score matrix",
                )

    @staticmethod
    def _is_softmax(ctx: ModuleContext, call: ast.Call) -> bool:
        if ctx.call_qualname(call) in _SOFTMAX:
            return True
        return (
            isinstance(call.func, ast.Attribute)
            and call.func.attr == "softmax"
            and (ctx.call_qualname(call) is None)
        )

    @staticmethod
    def _probability_names(call: ast.Call, nodes: list[ast.AST]) -> set[str]:
        """Names the softmax result is assigned to."""
        names: set[str] = set()
        for node in nodes:
            if isinstance(node, ast.Assign) and node.value is call:
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        return names

    def _feeds_value_product(
        self, ctx: ModuleContext, call: ast.Call, nodes: list[ast.AST]
    ) -> bool:
        parent = ctx.parents.get(call)
        if (
            isinstance(parent, ast.BinOp)
            and isinstance(parent.op, ast.MatMult)
            and parent.left is call
        ):
            return True
        names = self._probability_names(call, nodes)
        return any(
            isinstance(node, ast.BinOp)
            and isinstance(node.op, ast.MatMult)
            and isinstance(node.left, ast.Name)
            and node.left.id in names
            for node in nodes
        )

    def _weights_escape(self, ctx: ModuleContext, call: ast.Call, nodes: list[ast.AST]) -> bool:
        """The attention weights are returned or stored (so the fused kernel cannot replace)."""
        names = self._probability_names(call, nodes)
        for node in nodes:
            if isinstance(node, ast.Return) and node.value is not None:
                returned = {n.id for n in ast.walk(node.value) if isinstance(n, ast.Name)}
                if returned & names and not any(
                    isinstance(b, ast.BinOp) and isinstance(b.op, ast.MatMult)
                    for b in ast.walk(node.value)
                ):
                    return True
                if isinstance(node.value, ast.Tuple) and any(
                    isinstance(e, ast.Name) and e.id in names for e in node.value.elts
                ):
                    return True
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.targets[0], ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in names
            ):
                return True
        return False
